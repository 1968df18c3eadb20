"""Log lines as a real `gateway` process writes them: journald priorities when stderr is
the journal, JSON objects with the event's fields, warnings for what needs an operator."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.adapters import logs
from gateway.adapters.home import Home
from tests.helpers import PARTNER_ID, ManualClock, PartnerPgp, cli, events, run_once, send
from tests.sshd import SshServer


def gateway_lines(home: Home, log: Path, *args: str, journal: bool = False) -> list[str]:
    """Run `gateway ARGS` with stderr in `log` (as the journal, if `journal`: systemd names
    the stream's device and inode in $JOURNAL_STREAM); the raw lines it wrote there."""
    log.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        st = log.stat()
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    start = log.stat().st_size
    with log.open("ab") as err:
        done = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), *args],
                              stderr=err, stdout=subprocess.PIPE, env=env, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, log.read_text()
    return log.read_bytes()[start:].decode().splitlines()


@pytest.fixture
def held(exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path) -> tuple[Home, str]:
    """A package for a partner that is then disabled: the next pass holds it."""
    home = exchange[0]
    (short_tmp / "n.xml").write_bytes(b"<notice/>")
    pid = send(home, short_tmp / "n.xml")
    assert cli(home, "partner", "disable", PARTNER_ID, "--reason", "breach").exit_code == 0
    return home, pid


def test_on_the_journal_each_line_starts_with_its_priority(
    held: tuple[Home, str], short_tmp: Path
) -> None:
    home, pid = held
    log = short_tmp / "journal.log"
    lines = gateway_lines(home, log, "run", "--once", journal=True)
    lines += gateway_lines(
        home, log, "partner", "enable", PARTNER_ID, "--reason", "fixed", journal=True
    )

    assert lines and all(line[:3] in {"<3>", "<4>", "<6>", "<7>"} for line in lines), lines
    [hold] = [line for line in lines if f"hold {pid}" in line]
    assert hold.startswith("<4>") and " WARNING hold " in hold and "disabled" in hold
    [enable] = [line for line in lines if "partner.enable" in line]
    assert enable.startswith("<6>") and " INFO partner.enable " in enable


def test_off_the_journal_lines_carry_no_priority(held: tuple[Home, str], short_tmp: Path) -> None:
    home, pid = held
    lines = gateway_lines(home, short_tmp / "plain.log", "run", "--once")

    [hold] = [line for line in lines if f"hold {pid}" in line]
    assert not any(line.startswith("<") for line in lines), lines
    assert " WARNING hold " in hold


def test_json_lines_have_the_events_fields(held: tuple[Home, str], short_tmp: Path) -> None:
    home, pid = held
    lines = gateway_lines(home, short_tmp / "json.log", "--log-format", "json", "run", "--once")

    objects = [json.loads(line) for line in lines]
    [hold] = [o for o in objects if o["action"] == "hold"]
    assert hold["package_id"] == pid and hold["partner"] == PARTNER_ID
    assert (hold["state"], hold["level"], hold["logger"]) == ("held", "warning", "gateway")
    assert "disabled" in hold["error"] and hold["exception"] is None
    assert hold["message"].startswith(f"hold {pid} held {PARTNER_ID}: ")
    assert all(set(logs.FIELDS) <= set(o) for o in objects)


def test_json_and_journal_together(held: tuple[Home, str], short_tmp: Path) -> None:
    home, pid = held
    lines = gateway_lines(home, short_tmp / "both.log", "--log-format", "json", "run", "--once",
                          journal=True)  # fmt: skip
    [hold] = [line for line in lines if '"hold"' in line]
    assert hold.startswith("<4>{") and json.loads(hold[3:])["package_id"] == pid


def test_an_exception_is_one_json_object_with_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup(debug=False, log_format="json")
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("gateway").exception("step failed", extra={"package_id": "P1"})
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["package_id"] == "P1"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("ValueError: bad value")


def test_journal_prefix_of_every_level_and_every_traceback_line() -> None:
    journal = logs._Journal(logging.Formatter("%(levelname)s %(message)s"))
    for level, n in (
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
    ):
        record = logging.LogRecord("gateway", level, __file__, 1, "a\nb", None, None)
        assert journal.format(record).split("\n") == [
            f"<{n}>{logging.getLevelName(level)} a", f"<{n}>b"]  # fmt: skip


def test_text_lines_still_escape_what_a_partner_sent(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup(debug=False, log_format="text")
    logging.getLogger("gateway").warning("refused: %s", "evil\nforged line\x1b[2J")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("WARNING refused: evil\\x0aforged line\\x1b[2J")


def test_an_overdue_receipt_is_one_warning_once(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, clock: ManualClock,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    home = exchange[0]
    (short_tmp / "n.xml").write_bytes(b"<notice/>")
    pid = send(home, short_tmp / "n.xml", clock=clock)
    run_once(home, clock)
    clock.advance(86400 - 60)
    run_once(home, clock)
    assert not [e for e in events(home, pid) if e.action == "receipt.overdue"]

    clock.advance(120)
    capsys.readouterr()
    for _ in range(3):
        run_once(home, clock)
        clock.advance(600)

    [overdue] = [e for e in events(home, pid) if e.action == "receipt.overdue"]
    warned = [line for line in capsys.readouterr().err.splitlines() if "receipt.overdue" in line]
    assert (
        len(warned) == 1 and f" WARNING receipt.overdue {pid} {PARTNER_ID}: no receipt" in warned[0]
    )
    assert overdue.partner == PARTNER_ID
