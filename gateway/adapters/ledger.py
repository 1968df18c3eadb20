"""The SQLite ledger: partners, packages and the hash-chained audit trail.

One writer at a time: every write transaction starts with `BEGIN IMMEDIATE`, so a CLI
and a daemon never meet a read-to-write upgrade failure (research/library-pitfalls.md S2),
and no transaction is ever held across network or GnuPG work. WAL with synchronous=FULL: a
committed step survives a power cut (S3). Each state change and its audit event are
committed together, so the ledger is never left with a package in two states or none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import sqlite_utils

from gateway.adapters.schema import MIGRATIONS
from gateway.core import lifecycle
from gateway.core.clock import Clock
from gateway.core.errors import (
    GatewayError,
    IllegalTransition,
    LedgerBusy,
    LedgerDamaged,
    LedgerMissing,
    LedgerUnavailable,
    NoSuchPackage,
    PartnerError,
    UnknownPartner,
)
from gateway.core.lifecycle import State
from gateway.core.model import (
    Contact,
    Event,
    Package,
    Partner,
    chain_hash,
    chained,
    detail_digest,
    utc,
)

GENESIS: Final = "0" * 64
#: The `what` of the `erase` event by which retention erases a package's ledger details.
ERASED_DETAILS: Final = "ledger details"
#: The hot paths go through plain SQL: sqlite-utils' `insert` and `update` read the
#: table's schema and copy each row again on every call, which cost about 2 ms of CPU per
#: small package (bench.run --cprofile, scenario 3), and each of its `table(...)` and
#: `rows_where` reads `sqlite_master` first (12 of the 52 statements per package).
_PACKAGE_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(Package))
_EVENT_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(Event))
_INSERT_PACKAGE: Final = (
    f"INSERT INTO packages ({', '.join(_PACKAGE_COLUMNS)}) "  # noqa: S608 - column names only
    f"VALUES ({', '.join('?' * len(_PACKAGE_COLUMNS))})"
)
_INSERT_EVENT: Final = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "  # noqa: S608 - column names only
    f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
)
log = logging.getLogger("gateway")


def translated(err: BaseException, path: Path) -> GatewayError:
    """What an error SQLite raised about the ledger at `path` means to an operator.

    A file that is no database, or a malformed one, is damage: no change of permissions
    helps, restoring does. Anything else (cannot open, read-only, I/O) is about the file's
    access or its disk.
    """
    if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError):
        return LedgerDamaged(
            f"the ledger {path} is damaged ({err}): stop the daemon, keep the file aside, and "
            "restore ledger.db from backup"
        )
    return LedgerUnavailable(
        f"cannot open the ledger {path} ({err}): check its owner, its permissions and free disk space"
    )


def trouble(err: BaseException, path: Path) -> GatewayError | None:
    """`err` as the ledger's trouble, for the places that meet SQLite's errors unwrapped
    (a malformed page is found by whichever query reads it); None if it is not."""
    if isinstance(err, (LedgerMissing, LedgerDamaged, LedgerUnavailable)):
        return err
    if isinstance(err, sqlite3.DatabaseError):
        return translated(err, path)
    return None


class _Slot:
    """One thread's connection, in a value its thread alone refers to."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db


class Ledger:
    """The ledger of one home, as seen by one actor (an OS user, or `daemon`).

    Safe to share between threads: each thread gets its own SQLite connection.
    """

    def __init__(self, path: Path, actor: str, clock: Clock, create: bool = False) -> None:
        """Open the ledger at `path`; only with `create` (`gateway init`) is a new one made.

        A home that lost its ledger gets `LedgerMissing`, never a new empty ledger that
        would forget every package and restart the audit trail.
        """
        if not path.exists():
            if not create:
                raise LedgerMissing(
                    f"the ledger {path} is missing, though this home was initialised; no new "
                    "ledger was made: restore ledger.db from backup"
                )
            # It names partners and packages: owner only, whatever the umask.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.path = path
        self.actor = actor
        self.clock = clock
        self._local = threading.local()
        self._closers: list[weakref.finalize[[], _Slot]] = []
        self._lock = threading.Lock()
        try:
            pending = MIGRATIONS.pending(self.db)
        except sqlite3.DatabaseError as err:
            raise translated(err, path) from None
        if pending:
            with self.transaction():
                MIGRATIONS.apply(self.db)

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, opened on first use and closed when the thread ends.

        A drop-server session and a poll's handlers each run on threads of their own;
        each connection holds two descriptors (the database and its WAL), so one kept
        after its thread ended was a leak: 30 logins cost 59 descriptors for good.
        """
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = self._local.slot = _Slot(self._connect())
            # Runs when the thread ends (Python drops its thread-local values then), or at close().
            closer = weakref.finalize(slot, slot.db.close)
            with self._lock:
                self._closers = [c for c in self._closers if c.alive] + [closer]
        return slot.db

    def open_connections(self) -> int:
        """How many threads hold a connection now."""
        with self._lock:
            return sum(c.alive for c in self._closers)

    def _connect(self) -> sqlite_utils.Database:
        try:
            # Each connection is used by one thread only; it may be closed in another.
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            for pragma in (
                "journal_mode=WAL",
                "synchronous=FULL",
                "foreign_keys=ON",
                "busy_timeout=30000",
            ):
                conn.execute(f"PRAGMA {pragma}")
        except sqlite3.Error as e:
            raise translated(e, self.path) from None
        return sqlite_utils.Database(conn)

    def rows(self, sql: str, args: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """The rows of one query, as dicts by column name."""
        cursor = self.db.execute(sql, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def put(self, table: str, row: dict[str, Any]) -> None:
        """Write `row` into `table`, in place of any row with the same key (the caller's
        transaction); `table` and the keys of `row` are the code's names, never input."""
        self.db.execute(
            f"INSERT OR REPLACE INTO {table} ({', '.join(row)}) "  # noqa: S608 - code's names only
            f"VALUES ({', '.join('?' * len(row))})",
            list(row.values()),
        )

    def quick_check(self) -> list[str]:
        """SQLite's `PRAGMA quick_check`: what it finds wrong in the file (empty: nothing)."""
        try:
            rows = [str(row[0]) for row in self.db.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as err:
            return [str(err)]
        return [] if rows == ["ok"] else rows

    def snapshot(self, target: Path) -> None:
        """Copy the ledger as it is at one instant into `target`, a new file, while others write.

        SQLite's online backup API, all pages in one step: it reads under one read
        transaction, so the copy is one committed state, and no writer waits for it (WAL).
        """
        try:
            source = sqlite3.connect(self.path, timeout=30)
            copy = sqlite3.connect(target)
            try:
                source.backup(copy, pages=0)
                copy.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
            finally:
                copy.close()
                source.close()
        except sqlite3.Error as e:
            raise LedgerUnavailable(
                f"cannot copy the ledger {self.path} ({e}): check its permissions and free disk space"
            ) from None

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            closers, self._closers = self._closers, []
        for closer in closers:
            closer()
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, taking the write lock at once; its events are logged after.

        Writes inside it (by this thread) join it: several steps that are each safe to
        redo after a crash can share one commit, and so one fsync (about 9 ms here).
        """
        if getattr(self._local, "appended", None) is not None:
            yield  # joins the transaction this thread already holds
            return
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise LedgerBusy(f"the ledger is busy or unwritable ({e}); try again") from None
        appended: list[Event] = []
        self._local.appended = appended
        try:
            try:
                yield
            except BaseException:
                self.db.rollback()
                raise
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as e:
                self.db.rollback()
                raise LedgerBusy(
                    f"the ledger could not commit ({e}); nothing was recorded, try again"
                ) from None
        finally:
            self._local.appended = None
        for event in appended:
            log.log(logging.WARNING if event.warns() else logging.INFO, "%s", event.summary(),
                    extra=event.fields())  # fmt: skip

    # -- audit trail ----------------------------------------------------------------

    def _append(
        self,
        action: str,
        *,
        package_id: str | None = None,
        partner: str | None = None,
        state: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Event:
        """Append one event to the chain; the caller holds the write transaction.

        Its DPA 2018 s.62 category is the action's, from the lifecycle.
        """
        appended: list[Event] = self._local.appended
        if appended:  # this transaction holds the write lock: its newest event is the head
            last: tuple[int, str] | None = (appended[-1].id, appended[-1].hash)
        else:
            last = self.db.execute(
                "SELECT id, hash FROM events ORDER BY id DESC LIMIT 1"
            ).fetchone()
        text = json.dumps(detail, sort_keys=True, ensure_ascii=False) if detail else None
        event = Event(
            id=(last[0] + 1) if last else 1,
            at=utc(self.clock.now()),
            actor=self.actor,
            action=action,
            category=lifecycle.CATEGORY.get(action),
            partner=partner,
            package_id=package_id,
            state=state,
            prev_hash=last[1] if last else GENESIS,
            hash="",
            detail=text,
            detail_sha256=detail_digest(text) if text is not None else None,
        )
        event = dataclasses.replace(event, hash=event.expected_hash())
        self.db.execute(_INSERT_EVENT, [getattr(event, c) for c in _EVENT_COLUMNS])
        appended.append(event)
        return event

    def record(self, action: str, **kwargs: Any) -> Event:
        """Record an event that changes no package state (partner change, erasure, ...)."""
        with self.transaction():
            return self._append(action, **kwargs)

    def events(self, package_id: str | None = None, since_id: int = 0) -> Iterator[Event]:
        """Events in order, for one package or all."""
        where, args = "id > ?", [since_id]
        if package_id:
            where, args = where + " AND package_id = ?", [since_id, package_id]  # type: ignore[list-item]
        rows = self.db.execute(
            f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE {where} ORDER BY id",  # noqa: S608 - column names only
            args,
        )
        for row in rows:
            yield Event(*row)

    def events_of(self, action: str, after_id: int = 0) -> list[Event]:
        """Every event of one action after event `after_id`, in order."""
        rows = self.db.execute(
            f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events "  # noqa: S608 - column names only
            "WHERE id > ? AND action = ? ORDER BY id",
            [after_id, action],
        )
        return [Event(*row) for row in rows]

    def verify_chain(self) -> tuple[int, Event | None]:
        """Recompute the chain; return (events checked, the first broken event or None).

        An edited row fails its own hash (or its detail its digest); a removed or
        reordered one breaks the id sequence or the next row's link. A detail may be
        missing only where a chained `erase` event says retention erased that package's
        details. Works on raw rows: a million took about 14 s here (bench.run).
        """
        erased = {row[0] for row in self.db.execute(
            "SELECT package_id FROM events WHERE action = 'erase' AND json_extract(detail, '$.what') = ?",
            [ERASED_DETAILS])}  # fmt: skip
        prev, count = GENESIS, 0
        cursor = self.db.execute(
            "SELECT id, at, actor, action, category, partner, package_id, state, detail, "
            "prev_hash, hash, detail_sha256 FROM events ORDER BY id"
        )
        for row in cursor:
            digest, detail = row[11], row[8]
            if (
                row[0] != count + 1
                or row[9] != prev
                or row[10] != chain_hash(chained(row[:10], digest))
                or (digest is not None and detail is not None and detail_digest(detail) != digest)
                or (digest is not None and detail is None and row[6] not in erased)
            ):
                return count, Event(*row)
            prev, count = row[10], count + 1
        return count, None

    def head(self) -> tuple[int, str]:
        """The id and hash of the newest event (0 and the genesis hash when none)."""
        row = self.db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def event_hash(self, event_id: int) -> str | None:
        """The stored hash of one event, if it exists."""
        row = self.db.execute("SELECT hash FROM events WHERE id = ?", [event_id]).fetchone()
        return str(row[0]) if row else None

    # -- the gateway's own keys ----------------------------------------------------------

    def add_own_key(self, fingerprint: str, detail: dict[str, Any]) -> None:
        """Record a new key of the gateway's own; the newest one signs."""
        with self.transaction():
            self.db.table("own_keys").insert(
                {"fingerprint": fingerprint, "created_at": utc(self.clock.now())}
            )
            self._append("key.create", detail={"openpgp_key": fingerprint, **detail})

    def own_keys(self) -> frozenset[str]:
        """Every key the gateway has had: packages addressed to any of them are for us."""
        return frozenset(row[0] for row in self.db.execute("SELECT fingerprint FROM own_keys"))

    def own_key(self) -> str | None:
        """The fingerprint of the gateway's newest own key."""
        row = self.db.execute(
            "SELECT fingerprint FROM own_keys ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        return str(row[0]) if row else None

    # -- partners ---------------------------------------------------------------------

    def add_partner(self, partner: Partner, reason: str) -> None:
        """Register a partner; refuses an id already registered."""
        with self.transaction():
            if self.db.table("partners").count_where("id = ?", [partner.id]):
                raise PartnerError(
                    f"partner {partner.id} is already registered: see `gateway partner show {partner.id}`"
                )
            self.db.table("partners").insert(dataclasses.asdict(partner))
            self.db.table("partner_keys").insert(
                {
                    "partner": partner.id,
                    "fingerprint": partner.openpgp_key,
                    "added_at": partner.added_at,
                }
            )
            self._append(
                "partner.add",
                partner=partner.id,
                detail={
                    "reason": reason,
                    "transport": partner.transport,
                    "openpgp_key": partner.openpgp_key,
                    "approval": partner.approval,
                    "endpoint": f"{partner.user}@{partner.host}:{partner.port}"
                    if partner.host
                    else None,
                },
            )

    def rotate_partner_key(self, partner_id: str, fingerprint: str, reason: str) -> None:
        """Make `fingerprint` the partner's key; the old one verifies for the overlap window."""
        with self.transaction():
            old = self.partner(partner_id).openpgp_key
            now = self.clock.now()
            self.db.execute("UPDATE partner_keys SET retired_at = ? WHERE partner = ? AND retired_at IS NULL",
                            [now, partner_id])  # fmt: skip
            self.db.table("partner_keys").upsert(
                {
                    "partner": partner_id,
                    "fingerprint": fingerprint,
                    "added_at": utc(now),
                    "retired_at": None,
                },
                pk=("partner", "fingerprint"),
            )
            self.db.table("partners").update(partner_id, {"openpgp_key": fingerprint})
            self._append("partner.rotate-key", partner=partner_id,
                         detail={"reason": reason, "old_key": old, "new_key": fingerprint})  # fmt: skip

    def partner_signers(self, partner_id: str, overlap_seconds: float) -> frozenset[str]:
        """The keys that may sign for a partner now: its key, and keys retired within the overlap."""
        rows = self.db.execute(
            "SELECT fingerprint FROM partner_keys WHERE partner = ? AND (retired_at IS NULL OR retired_at > ?)",
            [partner_id, self.clock.now() - overlap_seconds],
        )
        return frozenset(row[0] for row in rows)

    def set_enabled(self, partner_id: str, enabled: bool, reason: str) -> None:
        """Stop or resume traffic with a partner."""
        self.update_partner(partner_id, "partner.enable" if enabled else "partner.disable",
                            {"reason": reason}, enabled=int(enabled))  # fmt: skip

    def update_partner(
        self, partner_id: str, action: str, detail: dict[str, Any], **fields: Any
    ) -> None:
        """Change fields of a registered partner, with an event."""
        with self.transaction():
            self.partner(partner_id)
            self.db.table("partners").update(partner_id, fields)
            self._append(action, partner=partner_id, detail=detail)

    def partner(self, partner_id: str) -> Partner:
        """The partner with this id."""
        rows = self.rows("SELECT * FROM partners WHERE id = ?", [partner_id])
        if not rows:
            raise UnknownPartner(f"no partner {partner_id}: see `gateway partner list`")
        return Partner(**rows[0])

    def partners(self) -> list[Partner]:
        """Every partner, by id."""
        return [Partner(**row) for row in self.rows("SELECT * FROM partners ORDER BY id")]

    def contact(self, partner_id: str, error: str | None) -> tuple[Contact, Contact]:
        """Record a contact with a partner, a success or a failure (`error`): (before, after)."""
        now = self.clock.now()
        with self.transaction():
            before = self.contacts().get(partner_id, Contact(partner_id))
            if error is None:
                after = dataclasses.replace(before, last_ok=now, down_since=None, failures=0)
            else:
                after = dataclasses.replace(before, last_failure=now, last_error=error,
                                            down_since=before.down_since or now, failures=before.failures + 1)  # fmt: skip
            self.put("contacts", dataclasses.asdict(after))
        return before, after

    def contacts(self) -> dict[str, Contact]:
        """Each partner's health record, by partner id (a partner never contacted has none)."""
        return {row["partner"]: Contact(**row) for row in self.rows("SELECT * FROM contacts")}

    # -- packages ---------------------------------------------------------------------

    def insert(
        self, package: Package, action: str, detail: dict[str, Any] | None = None
    ) -> Package:
        """Record a new package and its first event together."""
        lifecycle.check_initial(package.direction, package.state)
        with self.transaction():
            try:
                self.db.execute(_INSERT_PACKAGE, [getattr(package, c) for c in _PACKAGE_COLUMNS])
            except sqlite3.IntegrityError:
                if self.find(package.package_id) is None:
                    raise
                raise IllegalTransition(
                    f"package {package.package_id} is already in the ledger"
                ) from None
            self._append(
                action,
                package_id=package.package_id,
                partner=package.partner,
                state=package.state,
                detail=detail,
            )
        return package

    def transition(
        self,
        package_id: str,
        new: State,
        action: str,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Package:
        """Move a package to `new` (checked against the lifecycle), updating `fields`."""
        with self.transaction():
            current = self.package(package_id)
            lifecycle.check(current.state, new)
            changed = self._update(current, state=new, **fields)
            self._append(
                action,
                package_id=package_id,
                partner=current.partner,
                state=new,
                detail=detail,
            )
        return changed

    def note(
        self,
        package_id: str,
        action: str,
        detail: dict[str, Any] | None = None,
        **fields: Any,
    ) -> Package:
        """Update fields of a package without changing its state, with an event."""
        with self.transaction():
            current = self.package(package_id)
            changed = self._update(current, **fields)
            self._append(
                action,
                package_id=package_id,
                partner=current.partner,
                detail=detail,
            )
        return changed

    def _update(self, current: Package, **fields: Any) -> Package:
        """Write `fields` of a package; return it as it now is (as a fresh read would)."""
        fields["updated_at"] = utc(self.clock.now())
        if unknown := fields.keys() - set(_PACKAGE_COLUMNS):
            raise TypeError(f"packages has no columns {sorted(unknown)}")
        setting = ", ".join(f"{column} = ?" for column in fields)
        self.db.execute(
            f"UPDATE packages SET {setting} WHERE package_id = ?",  # noqa: S608 - checked names
            [*fields.values(), current.package_id],
        )
        return dataclasses.replace(current, **fields)

    def package(self, package_id: str) -> Package:
        """The package with this id."""
        package = self.find(package_id)
        if package is None:
            raise NoSuchPackage(f"no package {package_id} in the ledger: see `gateway ledger list`")
        return package

    def find(self, package_id: str) -> Package | None:
        """The package with this id, or None if the ledger has none."""
        rows = self.rows("SELECT * FROM packages WHERE package_id = ?", [package_id])
        return Package.from_row(rows[0]) if rows else None

    def packages(
        self,
        *,
        state: str | None = None,
        partner: str | None = None,
        direction: str | None = None,
        delivered_before: str | None = None,
        limit: int | None = None,
        erased: bool = False,
    ) -> list[Package]:
        """Packages, oldest first, filtered by state, partner, direction and delivery time;
        with `erased`, only those of which retention erased something."""
        where, args = ["erased IS NOT NULL"] if erased else [], []
        if delivered_before is not None:
            where.append("delivered_at < ?")
            args.append(delivered_before)
        for column, value in (("state", state), ("partner", partner), ("direction", direction)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        rows = self.rows(
            f"SELECT * FROM packages WHERE {' AND '.join(where) or 1} "  # noqa: S608 - placeholders only
            "ORDER BY created_at, package_id LIMIT ?",
            [*args, -1 if limit is None else limit],
        )
        return [Package.from_row(row) for row in rows]

    def due(
        self,
        states: frozenset[State],
        now: float,
        partner: str | None = None,
        limit: int = -1,
        skip: Collection[str] = (),
    ) -> list[Package]:
        """Pending packages in `states` (for `partner`, but none in `skip`) whose next attempt
        is due, oldest first.

        `limit` bounds the answer: the daemon asks for a few at a time, because reading all
        of a thousand pending packages on every wake-up made its main loop quadratic.
        """
        where, args = _due(states, now, partner, skip)
        rows = self.rows(
            f"SELECT * FROM packages WHERE {where} ORDER BY package_id LIMIT ?",  # noqa: S608 - placeholders only
            [*args, limit],
        )
        return [Package.from_row(row) for row in rows]

    def due_count(
        self, states: frozenset[State], now: float, partner: str, limit: int
    ) -> tuple[int, str | None]:
        """How many packages `due` would answer, and the oldest `updated_at` among them:
        a look that makes no packages (the daemon's every wake-up, while seals are in flight)."""
        where, args = _due(states, now, partner)
        count, oldest = self.db.execute(
            "SELECT count(*), min(updated_at) FROM (SELECT updated_at FROM packages "  # noqa: S608 - placeholders only
            f"WHERE {where} ORDER BY package_id LIMIT ?)",
            [*args, limit],
        ).fetchone()
        return count, oldest

    def erasable(self, states: frozenset[State], before: str, what: str, direction: str | None = None,
                 limit: int = -1) -> list[Package]:  # fmt: skip
        """Packages in `states`, last changed before `before`, of which `what` was not erased yet."""
        marks = ", ".join("?" * len(states))
        where = (f"state IN ({marks}) AND updated_at < ? "
                 "AND (erased IS NULL OR json_extract(erased, '$.' || ?) IS NULL)")  # fmt: skip
        args: list[object] = [*sorted(states), before, what]
        if direction is not None:
            where, args = where + " AND direction = ?", [*args, direction]
        rows = self.rows(
            f"SELECT * FROM packages WHERE {where} ORDER BY updated_at LIMIT ?",  # noqa: S608 - placeholders only
            [*args, limit],
        )
        return [Package.from_row(row) for row in rows]

    def erased(self, package_id: str | None, what: str, detail: dict[str, Any],
               partner: str | None = None) -> Event:  # fmt: skip
        """Record an erasure (DPA 2018 s.62: `erase`, category erasure) and mark the package.

        With `what` = "details", the package's details are erased here too, in the same
        transaction: its file name, reference, reply-to and last error, and the detail of
        each of its events written since details are chained by their SHA-256 (never those
        of `erase` events, which say what was erased). The chain still verifies.
        """
        with self.transaction():
            package = self.find(package_id) if package_id else None
            if package is not None:
                self.db.execute(
                    "UPDATE packages SET erased = json_set(coalesce(erased, '{}'), '$.' || ?, ?) "
                    "WHERE package_id = ?",
                    [what, utc(self.clock.now()), package.package_id],
                )
            if what == "details" and package is not None:
                self.db.execute(
                    "UPDATE packages SET payload_name = NULL, reference = NULL, in_reply_to = NULL, "
                    "last_error = NULL WHERE package_id = ?", [package.package_id])  # fmt: skip
                cursor = self.db.execute(
                    "UPDATE events SET detail = NULL WHERE package_id = ? AND action != 'erase' "
                    "AND detail IS NOT NULL AND detail_sha256 IS NOT NULL", [package.package_id])  # fmt: skip
                detail = {**detail, "what": ERASED_DETAILS, "events": cursor.rowcount}
            return self._append("erase", package_id=package.package_id if package else None,
                                partner=package.partner if package else partner, detail=detail)  # fmt: skip

    def receipts_due(self, partner: str) -> list[Package]:
        """Inbound packages from `partner` whose receipt has not been uploaded yet."""
        rows = self.rows(
            "SELECT * FROM packages WHERE direction = 'in' AND partner = ? "
            "AND receipt_state = 'due' ORDER BY created_at",
            [partner],
        )
        return [Package.from_row(row) for row in rows]

    def counts(self, overdue_before: str) -> dict[tuple[str | None, str], int]:
        """Number of packages by (partner, state), plus `overdue`: delivered before the given time."""
        rows = self.db.execute(
            "SELECT partner, state, count(*) FROM packages GROUP BY partner, state "
            "UNION ALL SELECT partner, 'overdue', count(*) FROM packages "
            "WHERE state = 'delivered' AND delivered_at < ? GROUP BY partner",
            [overdue_before],
        )
        return {(partner, state): n for partner, state, n in rows}


def _due(states: frozenset[State], now: float, partner: str | None = None,
         skip: Collection[str] = ()) -> tuple[str, list[object]]:  # fmt: skip
    """The WHERE clause of `Ledger.due`, and its arguments."""
    where = (f"state IN ({', '.join('?' * len(states))}) "
             "AND (next_attempt_at IS NULL OR next_attempt_at <= ?)")  # fmt: skip
    args: list[object] = [*sorted(states), now]
    if partner is not None:
        where, args = where + " AND partner = ?", [*args, partner]
    if skip:
        where, args = (
            where + f" AND package_id NOT IN ({', '.join('?' * len(skip))})",
            [*args, *skip],
        )
    return where, args
