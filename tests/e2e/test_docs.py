"""Docs are part of the code: the generated reference matches the commands, every setting
and command is in the operator guide, no relative link is broken, and the threat model
cites tests that exist.

docs/lifecycle.md is checked against its table in tests/core/test_lifecycle.py.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from gateway.cli import COMMANDS, main
from gateway.cli import reference as docs
from gateway.core.lifecycle import STATUS_COLUMNS as COLUMNS
from gateway.core.lifecycle import State
from gateway.core.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OPERATOR = DOCS / "operator.md"
THREAT_MODEL = DOCS / "threat-model.md"
REGENERATE = f"run `{docs.REGENERATE}`"
MARKDOWN = sorted([ROOT / "README.md", *DOCS.glob("*.md")])

#: `tests/<layer>/test_x.py::test_name`, optionally `::Class::test_name` and a `[param]` id.
TEST_REFERENCE = re.compile(
    r"tests/((?:\w+/)*test_\w+\.py)::((?:[A-Za-z_]\w*::)?test_\w+)(?:\[[^\]\s]*\])?"
)
#: Inline links and images `[text](target)` and reference definitions `[label]: target`.
LINK = re.compile(
    r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M
)
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)


def read(path: Path) -> str:
    """The text of a doc, failing with a clear message if it is missing."""
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing")
    return path.read_text(encoding="utf-8")


def test_cli_reference_is_generated_from_the_commands() -> None:
    path = DOCS / "cli.md"
    if not path.exists():
        pytest.fail(f"docs/cli.md is missing: {REGENERATE}")
    assert path.read_text(encoding="utf-8") == docs.document(), (
        f"docs/cli.md is out of date: {REGENERATE}"
    )


def test_module_prints_the_reference_whatever_the_terminal() -> None:
    env = {**os.environ, "COLUMNS": "40", "LINES": "10"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli.reference"], capture_output=True,
                          text=True, check=True, timeout=60, env=env)  # fmt: skip
    assert done.stdout == docs.document()


def test_reference_has_every_command_and_setting() -> None:
    text = docs.document()
    headings = re.findall(r"^## (gateway.*)$", text, re.M)
    assert headings[0] == "gateway"
    assert {f"gateway {name}" for name in COMMANDS} <= set(headings)
    assert len(headings) == len(set(headings))
    for setting in SETTINGS:
        assert f"| `{setting.name}` |" in text


def test_every_setting_is_in_the_operator_guide() -> None:
    text = read(OPERATOR)
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in text]
    assert not missing, f"docs/operator.md does not explain {', '.join(missing)}"


def test_every_command_is_in_the_operator_guide() -> None:
    text = read(OPERATOR)
    ctx = click.Context(main)
    missing = [
        f"gateway {name}"
        for name in COMMANDS
        if not main.get_command(ctx, name).hidden
        and not re.search(rf"gateway {re.escape(name)}\b", text)
    ]
    assert not missing, f"docs/operator.md does not mention {', '.join(missing)}"


def test_every_status_column_and_state_is_explained_in_the_operator_guide() -> None:
    text = read(OPERATOR)
    columns = [c.replace("_", " ") for c in COLUMNS if c.replace("_", " ") not in text]
    states = [s.value for s in State if f"`{s.value}`" not in text]
    assert not columns, f"docs/operator.md does not explain the status columns {columns}"
    assert not states, f"docs/operator.md does not explain the states {states}"


def links(text: str) -> list[str]:
    """Link targets in Markdown `text`, outside fenced code blocks."""
    return [a or b for a, b in LINK.findall(FENCE.sub("", text))]


def test_link_finder_finds_inline_and_reference_links_but_not_code() -> None:
    text = "See [a](docs/a.md#x) and ![i](<img.png>).\n[r]: ../b.md\n```\n[c](no.md)\n```\n"
    assert links(text) == ["docs/a.md#x", "img.png", "../b.md"]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_existing_files(path: Path) -> None:
    broken = []
    for target in links(read(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:, file:) or a place in the same page
        if not (path.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


def defined_tests(path: Path) -> set[str]:
    """Test functions in a test file, as `test_x` and `Class::test_x`."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            }
    return {name for name in names if name.split("::")[-1].startswith("test_")}


def test_threat_model_cites_tests_that_exist() -> None:
    cited = set(TEST_REFERENCE.findall(read(THREAT_MODEL)))
    assert len(cited) >= 10, "the threat model must show its guarantees with at least 10 tests"
    missing = []
    for file, name in sorted(cited):
        path = ROOT / "tests" / file
        if not path.exists() or name not in defined_tests(path):
            missing.append(f"tests/{file}::{name}")
    assert not missing, f"docs/threat-model.md cites tests that do not exist: {missing}"
