"""`gateway doctor --config-only`: what systemd's ExecStartPre runs before each start."""

from __future__ import annotations

import os
import pwd

import pytest

from gateway.adapters.home import Home
from gateway.core.errors import SettingsInvalid
from tests.helpers import cli, set_setting


def test_a_sound_home_passes_without_touching_keys_or_partners(home: Home) -> None:
    result = cli(home, "doctor", "--config-only")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert lines[0] == f"ok   {home.root} belongs to {me}, who runs this"
    assert all(line.startswith("ok   ") for line in lines)
    assert not any("own key" in line or "audit trail" in line for line in lines)


def test_a_bad_setting_fails_with_its_message(home: Home) -> None:
    set_setting(home, "serve.listen", "2222")

    result = cli(home, "doctor", "--config-only")

    assert result.exit_code == SettingsInvalid.exit_code
    assert result.stderr == (
        f"error: {home.settings}: serve.listen '2222' is not ADDRESS:PORT, e.g. 0.0.0.0:2222\n"
    )


def test_loose_permissions_fail(home: Home) -> None:
    os.chmod(home.gnupg, 0o755)  # noqa: S103 - the fault under test

    result = cli(home, "doctor", "--config-only")

    assert result.exit_code == 1
    assert f"fail {home.gnupg} has mode 755: chmod 700 {home.gnupg}" in result.stdout


def test_a_home_of_another_user_fails_and_names_both(home: Home) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving the home to another user takes root")
    os.chown(home.gnupg, 65534, 65534)  # nobody's, while root runs the command

    result = cli(home, "doctor", "--config-only")

    assert result.exit_code == 1
    assert (
        f"fail {home.root} belongs to nobody, this command runs as root: "
        "run it as that user: sudo -u nobody gateway ..."
    ) in result.stdout
