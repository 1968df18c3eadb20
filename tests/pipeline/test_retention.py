"""Retention on a clock the test moves: each class erased when due and not before, each
erasure an `erase` event (category erasure), and `audit verify` green afterwards."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from typing import Any

from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    Desk,
    ManualClock,
    cli,
    delivered,
    envelope,
    events,
    leave,
    manifest,
    package,
    partner_pid,
    receipt_json,
    run_once,
    seal,
    set_setting,
    sign,
)

DAY = 86400


def erasures(desk: Desk) -> list[dict[str, Any]]:
    """The `erase` events retention recorded, their details parsed, with their category."""
    return [{**json.loads(str(e.detail)), "category": e.category, "package_id": e.package_id}
            for e in events(desk.home) if e.action == "erase" and "why" in str(e.detail)]  # fmt: skip


def verified(desk: Desk, clock: ManualClock) -> str:
    result = cli(desk.home, "audit", "verify", clock=clock)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def accepted(desk: Desk, clock: ManualClock) -> str:
    """A partner's package fetched, accepted and delivered to spool/inbound."""
    pid = partner_pid()
    leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid))))
    run_once(desk.home, clock)
    assert package(desk.home, pid).state is State.ACCEPTED
    return pid


def test_an_inbound_delivery_not_taken_is_erased_after_its_days_and_not_before(
    desk: Desk, clock: ManualClock
) -> None:
    pid = accepted(desk, clock)
    folder = desk.home.inbound / PARTNER_ID / pid
    clock.advance(30 * DAY - 60)
    run_once(desk.home, clock)
    assert folder.is_dir() and not erasures(desk), "not yet due"

    clock.advance(120)
    run_once(desk.home, clock)

    assert not folder.exists()
    [erased] = erasures(desk)
    assert erased == {"what": "inbound delivery", "path": f"spool/inbound/{PARTNER_ID}/{pid}",
                      "why": "retention.inbound_days = 30: not taken 30 days after it was accepted",
                      "payload_sha256": package(desk.home, pid).payload_sha256,
                      "category": "erasure", "package_id": pid}  # fmt: skip
    run_once(desk.home, clock)
    assert len(erasures(desk)) == 1, "erased once"
    listed = cli(desk.home, "ledger", "list", "--erased", clock=clock).stdout.splitlines()
    assert len(listed) == 1 and listed[0].startswith(pid) and "erased: inbound 20" in listed[0]
    verified(desk, clock)


def test_an_inbound_delivery_taken_is_recorded_as_no_longer_held(
    desk: Desk, clock: ManualClock
) -> None:
    pid = accepted(desk, clock)
    shutil.rmtree(desk.home.inbound / PARTNER_ID / pid)  # the upstream system takes it

    run_once(desk.home, clock)

    [erased] = erasures(desk)
    assert erased["why"] == "taken by the upstream system: the gateway no longer holds it"
    assert json.loads(str(package(desk.home, pid).erased)) == {"inbound": erased_at(desk, pid)}


def erased_at(desk: Desk, pid: str) -> str:
    return next(e.at for e in events(desk.home, pid) if e.action == "erase")


def test_a_quarantined_file_is_erased_after_its_days(desk: Desk, clock: ManualClock) -> None:
    leave(desk, f"{partner_pid()}.receipt", b"not a signed receipt")
    run_once(desk.home, clock)
    [reason] = desk.home.quarantine.glob("*.reason.json")
    entry = json.loads(reason.read_text())["id"]
    kept = desk.home.quarantine / entry
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()
    clock.advance(90 * DAY - 60)
    run_once(desk.home, clock)
    assert kept.exists() and reason.exists()

    clock.advance(120)
    run_once(desk.home, clock)

    assert not kept.exists() and not reason.exists()
    [erased] = erasures(desk)
    assert (
        erased["entry"] == entry and erased["sha256"] == digest and erased["category"] == "erasure"
    )
    assert erased["why"] == "retention.quarantine_days = 90: quarantined more than 90 days ago"
    verified(desk, clock)


def acknowledged(desk: Desk, clock: ManualClock, name: str = "n.xml") -> str:
    pid, sha = delivered(desk, name, clock)
    leave(desk, f"{pid}.receipt", sign(desk.pgp, receipt_json(pid, sha)))
    run_once(desk.home, clock)
    assert package(desk.home, pid).state is State.ACKNOWLEDGED
    return pid


def test_a_sealed_file_left_beside_a_final_package_is_erased_after_its_days(
    desk: Desk, clock: ManualClock
) -> None:
    pid = acknowledged(desk, clock)
    left = desk.home.sealed_file(pid)
    shutil.copy(desk.server.upload / f"{pid}.pgp", left)  # a crash left it behind
    clock.advance(30 * DAY - 60)
    run_once(desk.home, clock)
    assert left.exists()

    clock.advance(120)
    run_once(desk.home, clock)

    assert not left.exists()
    [erased] = erasures(desk)
    assert erased["what"] == "sealed file"
    assert erased["ciphertext_sha256"] == package(desk.home, pid).ciphertext_sha256
    verified(desk, clock)


def test_ledger_details_are_erased_and_the_chain_still_verifies(
    desk: Desk, clock: ManualClock
) -> None:
    set_setting(desk.home, "retention.details_days", 10)
    pid = acknowledged(desk, clock, "Smith-John-1970.xml")
    before = events(desk.home, pid)
    assert package(desk.home, pid).payload_name == "Smith-John-1970.xml"
    clock.advance(10 * DAY - 60)
    run_once(desk.home, clock)
    assert package(desk.home, pid).payload_name == "Smith-John-1970.xml", "not yet due"

    clock.advance(120)
    run_once(desk.home, clock)

    after = package(desk.home, pid)
    assert after.payload_name is None and after.reference is None
    assert after.payload_sha256 and after.ciphertext_sha256 and after.state is State.ACKNOWLEDGED
    kept = events(desk.home, pid)
    assert [e.hash for e in kept[: len(before)]] == [e.hash for e in before], (
        "the chain is unchanged"
    )
    assert all(e.detail is None for e in kept[: len(before)] if e.action != "erase")
    assert "Smith-John" not in json.dumps([e.detail for e in kept])
    [erased] = [e for e in erasures(desk) if e["what"] == "ledger details"]
    assert erased["events"] == sum(1 for e in before if e.detail and e.action != "erase")
    assert erased["category"] == "erasure"
    assert "intact" in verified(desk, clock)
    show = cli(desk.home, "ledger", "show", pid, clock=clock)
    assert show.exit_code == 0 and "Smith-John" not in show.stdout


def test_a_detail_erased_without_its_erasure_event_breaks_the_chain(
    desk: Desk, clock: ManualClock
) -> None:
    pid = acknowledged(desk, clock)
    [first] = [e for e in events(desk.home, pid) if e.detail][:1]
    with closing(sqlite3.connect(desk.home.ledger)) as db:
        db.execute("UPDATE events SET detail = NULL WHERE id = ?", [first.id])
        db.commit()

    result = cli(desk.home, "audit", "verify", clock=clock)

    assert result.exit_code == 1
    assert f"event {first.id} was edited, removed or reordered" in result.stderr


def test_zero_keeps_for_ever(desk: Desk, clock: ManualClock) -> None:
    for name in ("inbound", "quarantine", "sealed"):
        set_setting(desk.home, f"retention.{name}_days", 0)
    pid = accepted(desk, clock)
    clock.advance(3650 * DAY)
    run_once(desk.home, clock)
    assert (desk.home.inbound / PARTNER_ID / pid).is_dir()
    assert not erasures(desk)
