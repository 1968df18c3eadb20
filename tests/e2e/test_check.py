"""`gateway check`: each condition's verdict and the plugin's exit code, on real ledgers,
with a clock the test moves."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.adapters.lock import exclusive
from tests.helpers import (
    PARTNER_ID,
    ManualClock,
    PartnerPgp,
    cli,
    gateway,
    run_once,
    send,
    set_setting,
)
from tests.sshd import SshServer


def checked(home: Home, clock: ManualClock) -> tuple[int, dict[str, str], str]:
    """Run `gateway check` and `check --json`: the exit code, each condition's verdict, the line."""
    line = cli(home, "check", clock=clock)
    as_json = cli(home, "check", "--json", clock=clock)
    doc = json.loads(as_json.stdout)
    assert line.exit_code == as_json.exit_code == doc["exit_code"], line.stdout
    assert line.stdout.startswith(f"GATEWAY {doc['status']} - ") and line.stdout.count("\n") == 1
    return line.exit_code, {c["name"]: c["status"] for c in doc["conditions"]}, line.stdout


def quiet(home: Home, clock: ManualClock, checkpoint: bool = True) -> None:
    """A home where every condition is OK: a checkpoint now, disk thresholds at 1 MiB, no
    daemon expected."""
    for name, value in (
        ("check.daemon", 0),
        ("check.disk_warning_mib", 1),
        ("check.disk_critical_mib", 1),
    ):
        set_setting(home, name, value)
    if checkpoint:
        with gateway(home, "daemon", clock) as gw:
            gw.audit.checkpoint()


@pytest.fixture
def ready(
    exchange: tuple[Home, PartnerPgp, SshServer], clock: ManualClock
) -> tuple[Home, SshServer]:
    home, _, server = exchange
    quiet(home, clock)
    return home, server


def test_all_ok_is_exit_0_with_perfdata(ready: tuple[Home, SshServer], clock: ManualClock) -> None:
    code, found, line = checked(ready[0], clock)
    assert code == 0 and set(found.values()) == {"OK"}, found
    assert line.startswith("GATEWAY OK - all conditions OK | held=0;1;10 failed=0;;1 overdue=0;1 ")
    assert " audit_chain=" in line and " checkpoint_age=0;7200;86400" in line
    assert cli(ready[0], "status", clock=clock).exit_code == 0, "nothing needs attention"


def test_no_checkpoint_yet_is_a_warning(home: Home, clock: ManualClock) -> None:
    quiet(home, clock, checkpoint=False)
    code, found, line = checked(home, clock)
    assert (code, found) == (
        1,
        {**found, "checkpoint_age": "WARNING"},
    ) and "no audit checkpoint yet" in line
    assert set(found.values()) == {"OK", "WARNING"}


def test_checkpoint_age_warns_then_is_critical(home: Home, clock: ManualClock) -> None:
    quiet(home, clock)
    clock.advance(7201)
    code, found, _ = checked(home, clock)
    assert (code, found["checkpoint_age"]) == (1, "WARNING")
    clock.advance(86400)
    code, found, line = checked(home, clock)
    assert (code, found["checkpoint_age"]) == (2, "CRITICAL")
    assert "newest checkpoint 93601 s old" in line


def test_daemon_liveness_from_the_home_lock(home: Home, clock: ManualClock) -> None:
    quiet(home, clock)
    set_setting(home, "check.daemon", 1)
    code, found, line = checked(home, clock)
    assert (code, found["daemon"]) == (2, "CRITICAL") and "no `gateway run` on this home" in line
    with exclusive(home.lock):
        code, found, _ = checked(home, clock)
        doc = json.loads(cli(home, "check", "--json", clock=clock).stdout)
    assert (code, found["daemon"]) == (0, "OK")
    [daemon] = [c for c in doc["conditions"] if c["name"] == "daemon"]
    assert daemon["text"] == f"daemon pid {os.getpid()}"


def test_held_warns_and_many_held_is_critical(
    ready: tuple[Home, SshServer], clock: ManualClock, short_tmp: Path
) -> None:
    home = ready[0]
    (short_tmp / "n.xml").write_bytes(b"<n/>")
    send(home, short_tmp / "n.xml", clock=clock)
    assert cli(home, "partner", "disable", PARTNER_ID, "--reason", "breach").exit_code == 0
    run_once(home, clock)
    code, found, line = checked(home, clock)
    assert (code, found["held"]) == (1, "WARNING") and "1 held" in line
    set_setting(home, "check.held_critical", 1)
    assert checked(home, clock)[:2] == (2, {**found, "held": "CRITICAL"})
    doctor = cli(home, "doctor", "--offline", clock=clock)
    assert doctor.exit_code == 1
    assert "fail 1 package(s) held: see `gateway ledger list --state held`" in doctor.stdout
    status = cli(home, "status", "--json", clock=clock)
    assert status.exit_code == 1 and json.loads(status.stdout)["attention"] is True


def test_failed_is_critical(
    ready: tuple[Home, SshServer], clock: ManualClock, short_tmp: Path
) -> None:
    home, server = ready
    set_setting(home, "retry.give_up_after_seconds", 60)
    (short_tmp / "n.xml").write_bytes(b"<n/>")
    send(home, short_tmp / "n.xml", clock=clock)
    server.stop()
    run_once(home, clock)
    clock.advance(3600)
    run_once(home, clock)
    code, found, _ = checked(home, clock)
    assert (code, found["failed"]) == (2, "CRITICAL")
    assert "fail 1 package(s) failed" in cli(home, "doctor", "--offline", clock=clock).stdout


def test_overdue_receipt_warns(
    ready: tuple[Home, SshServer], clock: ManualClock, short_tmp: Path
) -> None:
    home = ready[0]
    (short_tmp / "n.xml").write_bytes(b"<n/>")
    send(home, short_tmp / "n.xml", clock=clock)
    run_once(home, clock)
    assert checked(home, clock)[1]["overdue"] == "OK"
    clock.advance(86401)
    _code, found, line = checked(home, clock)
    assert found["overdue"] == "WARNING" and "1 overdue" in line
    doctor = cli(home, "doctor", "--offline", clock=clock).stdout
    assert (
        "warn 1 package(s) overdue: no receipt in time" in doctor
        and "ok   no package held" in doctor
    )
    assert cli(home, "status", clock=clock).exit_code == 1


def test_quarantine_warns(ready: tuple[Home, SshServer], clock: ManualClock) -> None:
    home = ready[0]
    (home.outbound / PARTNER_ID / "stray.xml").write_bytes(b"outside any kind folder")
    run_once(home, clock)
    code, found, line = checked(home, clock)
    assert (code, found["quarantined"]) == (1, "WARNING") and "1 quarantined" in line


def test_key_expiry_warns_then_is_critical(home: Home, clock: ManualClock) -> None:
    quiet(home, clock)
    with gateway(home, clock=clock) as gw:
        info = gw.own_key_info
    expires = min(t for t in (info.expires, info.encryption_expires) if t)
    for before, verdict in ((40, "OK"), (20, "WARNING"), (3, "CRITICAL")):
        clock.set(expires - before * 86400)
        with gateway(home, "daemon", clock) as gw:
            gw.audit.checkpoint()  # keep the checkpoint fresh: only the key is judged here
        _code, found, line = checked(home, clock)
        assert found["key_days_left"] == verdict, (before, line)
        assert f"key_days_left={before:g};30:;7:" in line


def test_a_partner_down_warns_then_is_critical(
    ready: tuple[Home, SshServer], clock: ManualClock
) -> None:
    home, server = ready
    server.stop()
    with gateway(home, "daemon", clock) as gw:
        gw.steps.turn(gw.ledger.partner(PARTNER_ID), [], poll=True)
    assert checked(home, clock)[1]["partners_down"] == "OK"
    clock.advance(901)
    code, found, line = checked(home, clock)
    assert (code, found["partners_down"]) == (1, "WARNING") and f"{PARTNER_ID} down 901 s" in line
    clock.advance(3600)
    assert checked(home, clock)[1]["partners_down"] == "CRITICAL"


def test_an_old_backlog_warns_then_is_critical(
    ready: tuple[Home, SshServer], clock: ManualClock, short_tmp: Path
) -> None:
    home = ready[0]
    (short_tmp / "n.xml").write_bytes(b"<n/>")
    send(home, short_tmp / "n.xml", clock=clock)
    for advance, verdict in ((3599, "OK"), (2, "WARNING"), (14400, "CRITICAL")):
        clock.advance(advance)
        with gateway(home, "daemon", clock) as gw:
            gw.audit.checkpoint()
        assert checked(home, clock)[1]["backlog_age"] == verdict


def test_disk_below_thresholds(home: Home, clock: ManualClock) -> None:
    quiet(home, clock)
    set_setting(home, "check.disk_warning_mib", 10**9)
    assert checked(home, clock)[:2][1]["disk_free_mib"] == "WARNING"
    set_setting(home, "check.disk_critical_mib", 10**9)
    code, found, _ = checked(home, clock)
    assert (code, found["disk_free_mib"]) == (2, "CRITICAL")


def test_a_broken_audit_chain_is_critical(home: Home, clock: ManualClock) -> None:
    quiet(home, clock)
    with sqlite3.connect(home.ledger) as db:
        db.execute("UPDATE events SET actor = 'someone else' WHERE id = 1")
    code, found, line = checked(home, clock)
    assert (code, found["audit_chain"]) == (2, "CRITICAL") and "audit trail:" in line


def test_a_check_that_cannot_run_is_unknown(short_tmp: Path) -> None:
    result = cli(short_tmp / "nowhere", "check")
    assert result.exit_code == 3
    assert result.stdout.startswith("GATEWAY UNKNOWN - ") and "gateway init" in result.stdout
