"""The ledger on a real SQLite file: lifecycle, the hash-chained audit trail, concurrency.

Tampering is done the way an intruder with file access would do it: a separate
`sqlite3` connection that edits rows directly, bypassing the `Ledger` API.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.clock import SystemClock
from gateway.adapters.ledger import Ledger
from gateway.core.errors import (
    GatewayError,
    IllegalTransition,
    NoSuchPackage,
    PartnerError,
    UnknownPartner,
)
from gateway.core.lifecycle import State
from gateway.core.model import Event, Package, Partner, utc
from gateway.core.names import new_package_id, new_ulid
from tests.helpers import GATEWAY_ID, PARTNER_ID, T0, ManualClock

S = State


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(path: Path, clock: ManualClock) -> Iterator[Ledger]:
    ledger = Ledger(path, "alice", clock)
    yield ledger
    ledger.close()


def outbound(
    state: State = State.RECEIVED, *, created: float | None = None, **fields: Any
) -> Package:
    """A new outbound package; `created` fixes the time inside its id (ids sort by it)."""
    pid = (
        new_package_id(GATEWAY_ID, time.time())
        if created is None
        else f"{GATEWAY_ID}-{new_ulid(created)}"
    )
    stamp = utc(T0 if created is None else created)
    fields.setdefault("partner", PARTNER_ID)
    return Package(
        package_id=pid,
        direction="out",
        state=state,
        created_at=stamp,
        updated_at=stamp,
        kind="conviction",
        **fields,
    )


def partner(partner_id: str = PARTNER_ID) -> Partner:
    return Partner(
        id=partner_id,
        transport="push",
        host="sftp.example.invalid",
        port=22,
        user="gbacro",
        upload_dir="/inbox",
        download_dir=None,
        openpgp_key="A" * 40,
        ssh_key="ssh-ed25519 AAAA",
        hide_recipient=1,
        enabled=1,
        added_at=utc(T0),
    )


def n_events(ledger: Ledger) -> int:
    return ledger.db["events"].count


# -- packages and their events ----------------------------------------------------------


def test_insert_records_the_package_and_its_first_event(ledger: Ledger) -> None:
    package = outbound(payload_name="n.xml")

    ledger.insert(package, "intake", detail={"source": "spool"})

    assert ledger.package(package.package_id) == package
    [event] = ledger.events(package.package_id)
    assert (event.id, event.actor, event.action, event.state, event.category) == (
        1,
        "alice",
        "intake",
        "received",
        "collection",
    )
    assert event.partner == PARTNER_ID
    assert event.at == utc(T0)
    assert json.loads(str(event.detail)) == {"source": "spool"}


def test_each_transition_updates_the_row_and_appends_one_event(
    ledger: Ledger, clock: ManualClock
) -> None:
    package = ledger.insert(outbound(), "intake")
    pid = package.package_id

    clock.set(T0 + 10)
    ledger.transition(pid, State.SEALED, "seal", ciphertext_size=123)
    clock.set(T0 + 20)
    ledger.transition(pid, State.DELIVERED, "deliver", delivered_at=utc(clock.now()))
    clock.set(T0 + 30)
    final = ledger.transition(pid, State.ACKNOWLEDGED, "acknowledge")

    assert final == ledger.package(pid)
    assert final.state is State.ACKNOWLEDGED
    assert final.ciphertext_size == 123
    assert final.delivered_at == utc(T0 + 20)
    assert final.created_at == utc(T0)
    assert final.updated_at == utc(T0 + 30)
    rows = [(e.action, e.state, e.category, e.actor, e.at) for e in ledger.events(pid)]
    assert rows == [
        ("intake", "received", "collection", "alice", utc(T0)),
        ("seal", "sealed", None, "alice", utc(T0 + 10)),
        ("deliver", "delivered", "disclosure", "alice", utc(T0 + 20)),
        ("acknowledge", "acknowledged", None, "alice", utc(T0 + 30)),
    ]
    assert [e.id for e in ledger.events(pid)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("path_to", "illegal"),
    [
        ([], S.ACKNOWLEDGED),  # received cannot skip to acknowledged
        ([], S.DELIVERED),
        ([], S.RECEIVED),  # not even to itself
        ([S.SEALED, S.DELIVERED], S.SEALED),
        ([S.SEALED, S.DELIVERED, S.ACKNOWLEDGED], S.REFUSED),  # final
        ([S.SEALED, S.DELIVERED, S.REFUSED], S.SEALED),  # final
        ([S.CANCELLED], S.RECEIVED),  # final
    ],
)
def test_illegal_transition_raises_and_changes_nothing(
    ledger: Ledger, clock: ManualClock, path_to: list[State], illegal: State
) -> None:
    pid = ledger.insert(outbound(), "intake").package_id
    for step in path_to:
        ledger.transition(pid, step, "step")
    before, events_before = ledger.package(pid), n_events(ledger)
    clock.set(T0 + 100)

    with pytest.raises(IllegalTransition) as caught:
        ledger.transition(pid, illegal, "bad", failures=9)

    assert ledger.package(pid) == before
    assert n_events(ledger) == events_before
    assert ledger.verify_chain() == (events_before, None)
    if before.state in (S.ACKNOWLEDGED, S.REFUSED, S.CANCELLED):
        assert "final" in str(caught.value)


def test_inserting_a_package_id_twice_is_a_gateway_error_and_changes_nothing(
    ledger: Ledger,
) -> None:
    """A second package under a known id (e.g. a partner re-sending one) is refused.

    The refusal must be a `GatewayError` (errors.py: sqlite3 errors are translated at the
    adapter's edge), not a raw `sqlite3.IntegrityError` that the CLI would show as a
    traceback.
    """
    package = ledger.insert(outbound(), "intake")
    again = dataclasses.replace(package, payload_name="other.xml")

    with pytest.raises(GatewayError):
        ledger.insert(again, "intake")

    assert ledger.package(package.package_id) == package
    assert n_events(ledger) == 1


def test_transition_of_an_unknown_package_raises_no_such_package(ledger: Ledger) -> None:
    with pytest.raises(NoSuchPackage):
        ledger.transition(new_package_id(GATEWAY_ID, time.time()), State.SEALED, "seal")
    assert n_events(ledger) == 0


@pytest.mark.parametrize(
    ("direction", "state"),
    [("out", S.SEALED), ("out", S.DELIVERED), ("out", S.FETCHED), ("in", S.RECEIVED)],
)
def test_a_package_cannot_start_in_a_later_state(
    ledger: Ledger, direction: str, state: State
) -> None:
    package = dataclasses.replace(outbound(), direction=direction, state=state)

    with pytest.raises(IllegalTransition, match=f"cannot start as {state}"):
        ledger.insert(package, "intake")

    assert ledger.db["packages"].count == 0
    assert n_events(ledger) == 0


# -- the hash chain ---------------------------------------------------------------------


@pytest.fixture
def trail(ledger: Ledger, clock: ManualClock, path: Path) -> Iterator[sqlite3.Connection]:
    """Five events in the ledger, and a raw connection to tamper with them."""
    pid = ledger.insert(outbound(), "intake", detail={"n": 1}).package_id
    for n, state in enumerate([S.SEALED, S.DELIVERED], start=2):
        clock.advance(1)
        ledger.transition(pid, state, "step", detail={"n": n})
    for n in (4, 5):
        clock.advance(1)
        ledger.record("partner.note", partner=PARTNER_ID, detail={"n": n})
    raw = sqlite3.connect(ledger.db.conn.execute("PRAGMA database_list").fetchone()[2])
    yield raw
    raw.close()


def tamper(raw: sqlite3.Connection, sql: str, *args: Any) -> None:
    with raw:
        raw.execute(sql, args)


def test_untouched_chain_verifies(ledger: Ledger, trail: sqlite3.Connection) -> None:
    assert ledger.verify_chain() == (5, None)


def test_empty_chain_verifies(ledger: Ledger) -> None:
    assert ledger.verify_chain() == (0, None)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("detail", '{"n":99}'),
        ("actor", "mallory"),
        ("at", utc(T0 - 3600)),
        ("state", "acknowledged"),
        ("package_id", None),
    ],
)
def test_editing_one_event_is_found_at_that_event(
    ledger: Ledger, trail: sqlite3.Connection, column: str, value: str | None
) -> None:
    tamper(trail, f"UPDATE events SET {column} = ? WHERE id = 3", value)  # noqa: S608

    checked, broken = ledger.verify_chain()

    assert checked == 2
    assert broken is not None
    assert broken.id == 3
    assert getattr(broken, column) == value


def test_deleting_a_middle_event_is_found_at_the_next_one(
    ledger: Ledger, trail: sqlite3.Connection
) -> None:
    tamper(trail, "DELETE FROM events WHERE id = 3")

    checked, broken = ledger.verify_chain()

    assert (checked, broken and broken.id) == (2, 4)


def test_reordering_two_events_is_found_at_the_first_swapped(
    ledger: Ledger, trail: sqlite3.Connection
) -> None:
    tamper(trail, "UPDATE events SET id = -2 WHERE id = 2")
    tamper(trail, "UPDATE events SET id = 2 WHERE id = 3")
    tamper(trail, "UPDATE events SET id = 3 WHERE id = -2")

    checked, broken = ledger.verify_chain()

    assert checked == 1
    assert broken is not None
    assert broken.id == 2
    assert broken.detail == '{"n": 3}', "the event that was third now sits second"


def test_rehashing_an_edited_event_is_found_at_the_next_one(
    ledger: Ledger, trail: sqlite3.Connection
) -> None:
    """An intruder who recomputes the edited row's hash still breaks the next row's link."""
    [original] = [e for e in ledger.events() if e.id == 3]
    forged = dataclasses.replace(original, actor="mallory")
    forged = dataclasses.replace(forged, hash=forged.expected_hash())
    tamper(trail, "UPDATE events SET actor = ?, hash = ? WHERE id = 3", forged.actor, forged.hash)

    checked, broken = ledger.verify_chain()

    assert checked == 3, "the forged row itself is self-consistent"
    assert broken is not None
    assert broken.id == 4
    assert broken.prev_hash == original.hash


# -- several connections at once --------------------------------------------------------


def in_thread(
    name: str, target: Callable[[], None]
) -> tuple[threading.Thread, list[BaseException]]:
    """Start `target` in a thread; the list receives what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread, errors


def write_in_thread(
    path: Path, actor: str, work: Callable[[Ledger], None]
) -> tuple[threading.Thread, list[BaseException]]:
    """Start a thread with its own Ledger (its own connection) doing `work`."""

    def run() -> None:
        other = Ledger(path, actor, SystemClock())
        try:
            work(other)
        finally:
            other.close()

    return in_thread(f"ledger-{actor}", run)


def record_many(n: int, start: threading.Barrier | None = None) -> Callable[[Ledger], None]:
    def work(ledger: Ledger) -> None:
        if start:
            start.wait(timeout=10)
        for i in range(n):
            ledger.record("test.write", detail={"i": i})

    return work


def test_cli_and_daemon_writing_at_once_keep_one_gapless_chain(ledger: Ledger, path: Path) -> None:
    """Two connections, as a CLI and the daemon would have, writing at the same time."""
    n = 150
    start = threading.Barrier(2)
    thread, errors = write_in_thread(path, "daemon", record_many(n, start))
    try:
        record_many(n, start)(ledger)
    finally:
        thread.join(timeout=60)

    assert errors == []
    assert ledger.verify_chain() == (2 * n, None)
    events = list(ledger.events())
    assert [e.id for e in events] == list(range(1, 2 * n + 1))
    assert Counter(e.actor for e in events) == {"alice": n, "daemon": n}
    assert ledger.db["events"].count == 2 * n


def test_one_ledger_shared_by_threads_keeps_one_gapless_chain(ledger: Ledger) -> None:
    """`Ledger` promises to be safe to share between threads (a connection per thread)."""
    n = 100
    start = threading.Barrier(3)
    workers = [in_thread(f"worker-{i}", lambda: record_many(n, start)(ledger)) for i in (1, 2)]
    try:
        record_many(n, start)(ledger)
    finally:
        for thread, _ in workers:
            thread.join(timeout=60)

    assert [errors for _, errors in workers] == [[], []]
    assert ledger.verify_chain() == (3 * n, None)
    assert [e.id for e in ledger.events()] == list(range(1, 3 * n + 1))


def test_writers_are_not_blocked_by_an_open_read_transaction(ledger: Ledger, path: Path) -> None:
    """WAL: a reader's snapshot (e.g. `gateway status` mid-query) never stalls the daemon."""
    ledger.record("test.write")
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)

        started = time.monotonic()
        thread, errors = write_in_thread(path, "daemon", record_many(5))
        record_many(5)(ledger)
        thread.join(timeout=60)
        elapsed = time.monotonic() - started

        assert errors == []
        assert elapsed < 5, "writers waited for the reader: not WAL?"
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,), "snapshot kept"
        reader.execute("COMMIT")
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (11,)
    finally:
        reader.close()
    assert ledger.verify_chain() == (11, None)


@pytest.mark.parametrize("opened", ["new", "existing"])
def test_every_connection_has_the_pragmas_in_force(path: Path, opened: str) -> None:
    if opened == "existing":
        Ledger(path, "setup", SystemClock()).close()
    ledger = Ledger(path, "alice", SystemClock())
    try:
        pragma = lambda name: ledger.db.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2, "FULL"
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") == 30000
    finally:
        ledger.close()


# -- migrations -------------------------------------------------------------------------


ALL_MIGRATIONS = [
    ("gateway", "m001_initial"),
    ("gateway", "m002_overdue_index"),
    ("gateway", "m003_obligations"),
    ("gateway", "m004_erasable_details"),
    ("gateway", "m005_approvals_and_reports"),
    ("gateway", "m006_contacts"),
]


def migrations(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as raw:
        rows = raw.execute(
            "SELECT migration_set, name, applied_at FROM _sqlite_migrations ORDER BY id"
        ).fetchall()
    raw.close()
    return rows


def test_migrations_run_once(path: Path) -> None:
    Ledger(path, "first", SystemClock()).close()
    applied = migrations(path)
    Ledger(path, "second", SystemClock()).close()
    Ledger(path, "third", SystemClock()).close()

    assert [(s, n) for s, n, _ in applied] == ALL_MIGRATIONS
    assert migrations(path) == applied, "reopening re-ran nothing"


def test_two_processes_opening_a_new_file_at_once_migrate_it_once(path: Path) -> None:
    """Both see the migration pending, then queue on the write lock: only one may apply it."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")
    threads = [write_in_thread(path, actor, lambda _: None) for actor in ("cli", "daemon")]
    time.sleep(0.5)  # both are now waiting for the lock
    holder.execute("COMMIT")
    holder.close()
    for thread, _ in threads:
        thread.join(timeout=60)

    assert [errors for _, errors in threads] == [[], []]
    assert [(s, n) for s, n, _ in migrations(path)] == ALL_MIGRATIONS


# -- partners ---------------------------------------------------------------------------


def test_partner_round_trip(ledger: Ledger) -> None:
    ledger.add_partner(partner(), "test partner")

    assert ledger.partner(PARTNER_ID) == partner()
    assert ledger.partners() == [partner()]
    [event] = ledger.events()
    assert (event.action, event.partner, event.actor) == ("partner.add", PARTNER_ID, "alice")
    assert json.loads(str(event.detail))["reason"] == "test partner"


def test_adding_a_partner_twice_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    ledger.add_partner(partner(), "first")
    changed = dataclasses.replace(partner(), host="evil.example.invalid")

    with pytest.raises(PartnerError, match="already registered"):
        ledger.add_partner(changed, "second")

    assert ledger.partners() == [partner()]
    assert n_events(ledger) == 1


def test_unknown_partner_says_how_to_list_them(ledger: Ledger) -> None:
    with pytest.raises(UnknownPartner, match="`gateway partner list`"):
        ledger.partner("XX-NONE")


# -- queries ----------------------------------------------------------------------------


def test_due_returns_pending_packages_whose_attempt_is_due_oldest_first(
    ledger: Ledger,
) -> None:
    now = T0 + 1000
    never_tried = outbound(created=T0 + 3)
    retry_past = outbound(created=T0 + 1, next_attempt_at=now - 1)
    retry_now = outbound(created=T0 + 2, next_attempt_at=now)
    retry_later = outbound(created=T0 + 0, next_attempt_at=now + 1)
    sealed = outbound(created=T0 + 4)
    for package in (never_tried, retry_later, retry_now, retry_past, sealed):
        ledger.insert(package, "intake")
    ledger.transition(sealed.package_id, S.SEALED, "seal")

    due = [p.package_id for p in ledger.due(frozenset({S.RECEIVED}), now)]
    both = [p.package_id for p in ledger.due(frozenset({S.RECEIVED, S.SEALED}), now)]
    nothing = ledger.due(frozenset({S.DELIVERED, S.HELD}), now)

    assert due == [retry_past.package_id, retry_now.package_id, never_tried.package_id]
    assert both == [*due, sealed.package_id]
    assert nothing == []
    assert [p.package_id for p in ledger.due(frozenset({S.RECEIVED}), now, limit=2)] == due[:2]
    ledger.add_partner(partner("XB-OTHER"), "test")
    other = outbound(created=T0 + 5, partner="XB-OTHER")
    ledger.insert(other, "intake")
    assert [p.package_id for p in ledger.due(frozenset({S.RECEIVED}), now, "XB-OTHER")] == [
        other.package_id
    ]
    assert (
        ledger.due(frozenset({S.RECEIVED}), now, PARTNER_ID)
        == ledger.due(frozenset({S.RECEIVED}), now)[:3]
    )


def test_writes_inside_a_transaction_commit_together_or_not_at_all(
    ledger: Ledger, path: Path
) -> None:
    first, second = outbound(), outbound()
    before = n_events(ledger)
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.insert(first, "intake")
        ledger.insert(second, "intake")
        raise RuntimeError("cut short")
    assert ledger.packages() == [] and n_events(ledger) == before

    other = sqlite3.connect(path)  # another connection sees nothing until the commit
    with ledger.transaction():
        ledger.insert(first, "intake")
        ledger.transition(first.package_id, S.SEALED, "seal")
        assert other.execute("SELECT count(*) FROM packages").fetchone() == (0,)
    assert other.execute("SELECT state FROM packages").fetchall() == [("sealed",)]
    assert n_events(ledger) == before + 2
    assert ledger.verify_chain() == (before + 2, None)
    other.close()


def test_counts_by_partner_and_state_with_overdue_receipts(ledger: Ledger) -> None:
    cutoff = T0 + 100

    def add(partner_id: str, path_to: list[State], delivered: float | None = None) -> None:
        pid = ledger.insert(outbound(partner=partner_id), "intake").package_id
        for state in path_to:
            fields = {"delivered_at": utc(delivered)} if state is S.DELIVERED and delivered else {}
            ledger.transition(pid, state, "step", **fields)

    delivered = [S.SEALED, S.DELIVERED]
    add("US-NCB", delivered, delivered=cutoff - 50)  # overdue
    add("US-NCB", delivered, delivered=cutoff - 1)  # overdue
    add("US-NCB", delivered, delivered=cutoff + 1)  # not yet
    add("US-NCB", [])
    add("FR-CJN", delivered, delivered=cutoff - 10)  # overdue
    add("FR-CJN", [*delivered, S.ACKNOWLEDGED], delivered=cutoff - 10)  # answered: not overdue

    counts = ledger.counts(utc(cutoff))

    assert counts == {
        ("US-NCB", "delivered"): 3,
        ("US-NCB", "received"): 1,
        ("US-NCB", "overdue"): 2,
        ("FR-CJN", "delivered"): 1,
        ("FR-CJN", "acknowledged"): 1,
        ("FR-CJN", "overdue"): 1,
    }


def test_counts_read_indexes_alone(ledger: Ledger) -> None:
    """On a million packages, reading rows for the overdue count cost 0.11-0.18 s of `status`."""
    ledger.insert(outbound(partner=PARTNER_ID), "intake")
    statements: list[str] = []
    ledger.db.conn.set_trace_callback(statements.append)
    try:
        ledger.counts(utc(T0))
    finally:
        ledger.db.conn.set_trace_callback(None)
    [query] = [sql for sql in statements if "count(*)" in sql]

    plan = [row[3] for row in ledger.db.execute(f"EXPLAIN QUERY PLAN {query}")]

    reads = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
    assert len(reads) == 2 and all("COVERING INDEX" in step for step in reads), plan


def test_events_are_plain_event_values(ledger: Ledger, trail: sqlite3.Connection) -> None:
    events = list(ledger.events())
    assert all(isinstance(e, Event) and e.hash == e.expected_hash() for e in events)
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert events[0].prev_hash == "0" * 64
