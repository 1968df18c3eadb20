"""Partner health: one record per partner in the ledger, written at each contact, read by
`partner list`, `status` and `doctor`; a partner that stays down is logged at a falling rate."""

from __future__ import annotations

import json

import pytest

from gateway.adapters.home import Home
from gateway.core.model import Contact, utc
from tests.helpers import PARTNER_ID, ManualClock, PartnerPgp, cli, gateway
from tests.sshd import SshServer


class Lines:
    """The gateway's log lines on stderr (the CLI's handler writes to whatever stderr is)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.lines: list[str] = []

    def about(self, words: str) -> list[str]:
        self.lines += self.capsys.readouterr().err.splitlines()
        return [line.split(" ", 2)[2] for line in self.lines if words in line]


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Lines:
    return Lines(capsys)


def test_worth_warning_falls_by_powers_of_two() -> None:
    warned = [n for n in range(1, 2881) if Contact("X", failures=n).worth_warning()]
    assert warned == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert not Contact("X").worth_warning()


def test_partner_down_then_back_is_recorded_and_logged_three_ways(
    exchange: tuple[Home, PartnerPgp, SshServer], clock: ManualClock, lines: Lines
) -> None:
    home, _, server = exchange
    with gateway(home, "daemon", clock) as gw:
        partner = gw.ledger.partner(PARTNER_ID)
        assert json.loads(cli(home, "partner", "list", "--json").stdout)[0]["health"] == "unknown"

        gw.steps.turn(partner, [], poll=True)
        first_ok = clock.now()
        assert gw.ledger.contacts()[PARTNER_ID].status == "ok"
        assert cli(home, "status", clock=clock).exit_code == 0

        server.stop()
        clock.advance(30)
        down_at = clock.now()
        for _ in range(20):  # 20 polls, 30 s apart, while the server is away
            gw.steps.turn(partner, [], poll=True)
            clock.advance(30)
        record = gw.ledger.contacts()[PARTNER_ID]
        assert (record.status, record.failures, record.down_since, record.last_ok) == (
            "down", 20, down_at, first_ok)  # fmt: skip
        warnings = lines.about("cannot be reached")
        assert [w.split(" ")[0] for w in warnings] == ["WARNING"] * 5  # attempts 1, 2, 4, 8, 16
        assert [w.split("(")[1].split(" ")[0] for w in warnings] == ["1", "2", "4", "8", "16"]
        assert f"since {utc(down_at)}" in warnings[0]

        listed = json.loads(cli(home, "partner", "list", "--json").stdout)[0]
        assert (listed["health"], listed["down_since"], listed["last_ok"]) == (
            "down", utc(down_at), utc(first_ok))  # fmt: skip
        assert listed["last_error"]
        status = cli(home, "status", "--json", clock=clock)
        assert status.exit_code == 1
        assert json.loads(status.stdout)["partners"][0]["health"] == "down"
        doctor = cli(home, "doctor", "--offline", clock=clock)
        assert doctor.exit_code == 1
        assert (
            f"fail {PARTNER_ID} cannot be reached since {utc(down_at)} (20 failed" in doctor.stdout
        )

        server.start()
        gw.steps.turn(partner, [], poll=True)
        back = lines.about("reachable again")
        assert back == [
            f"INFO partner {PARTNER_ID} is reachable again, after 20 failed contacts since {utc(down_at)}"
        ]  # fmt: skip
        assert len(lines.about("cannot be reached")) == 5
        record = gw.ledger.contacts()[PARTNER_ID]
        assert (record.status, record.failures, record.last_ok) == ("ok", 0, clock.now())
        assert json.loads(cli(home, "partner", "list", "--json").stdout)[0]["health"] == "ok"
        assert cli(home, "status", clock=clock).exit_code == 0


def test_doctor_reaching_a_partner_writes_the_same_record(
    exchange: tuple[Home, PartnerPgp, SshServer], clock: ManualClock
) -> None:
    home, _, server = exchange
    server.stop()
    doctor = cli(home, "doctor", clock=clock)
    assert doctor.exit_code == 1
    assert (
        f"fail {PARTNER_ID} cannot be reached since {utc(clock.now())} (1 failed" in doctor.stdout
    )
    assert json.loads(cli(home, "partner", "show", PARTNER_ID, "--json").stdout)["health"] == "down"
