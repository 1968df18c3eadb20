"""Shell completion, as docs/operator.md tells an operator to install it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "gateway"


def completion(*, env: dict[str, str]) -> str:
    done = subprocess.run([str(GATEWAY)], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=30, check=True)  # fmt: skip
    return done.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_documented_command_writes_a_completion_script(shell: str) -> None:
    script = completion(env={"_GATEWAY_COMPLETE": f"{shell}_source"})
    assert "_GATEWAY_COMPLETE" in script and f"{shell}_complete" in script
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operator.md").read_text()
    assert f"{shell}_source" in guide


def test_commands_and_options_complete() -> None:
    commands = completion(env={"_GATEWAY_COMPLETE": "bash_complete", "COMP_WORDS": "gateway pa",
                               "COMP_CWORD": "1"})  # fmt: skip
    options = completion(env={"_GATEWAY_COMPLETE": "bash_complete",
                              "COMP_WORDS": "gateway retry --re", "COMP_CWORD": "2"})  # fmt: skip
    assert commands.split() == ["plain,partner"]
    assert options.split() == ["plain,--reason"]
