"""A mandatory `--reason` must say something: the audit trail keeps it as the why."""

from __future__ import annotations

import json

import pytest

from gateway.adapters.home import Home
from tests.helpers import PARTNER_ID, PartnerPgp, cli, events
from tests.sshd import SshServer

#: Every command that takes a mandatory reason, with its other arguments.
COMMANDS = (
    ("retry", "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"),
    ("cancel", "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"),
    ("keys", "rotate"),
    ("partner", "disable", PARTNER_ID),
    ("partner", "enable", PARTNER_ID),
)


@pytest.mark.parametrize("reason", ["", "   ", "\t\n"])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_empty_reason_is_refused_before_anything_is_done(
    exchange: tuple[Home, PartnerPgp, SshServer], command: tuple[str, ...], reason: str
) -> None:
    home = exchange[0]
    before = len(events(home))

    result = cli(home, *command, "--reason", reason)

    assert result.exit_code == 2, result.output
    assert "Invalid value for '--reason': must say why (it is recorded in the audit trail)" in (
        result.stderr
    )
    assert len(events(home)) == before


def test_a_reason_is_recorded_without_its_surrounding_blanks(
    exchange: tuple[Home, PartnerPgp, SshServer],
) -> None:
    home = exchange[0]

    result = cli(home, "partner", "disable", PARTNER_ID, "--reason", "  maintenance window \n")

    assert result.exit_code == 0, result.stderr
    assert json.loads(events(home)[-1].detail or "{}")["reason"] == "maintenance window"
