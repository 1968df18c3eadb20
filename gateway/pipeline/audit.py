"""The audit trail's checks: the hash chain, and signed checkpoints of its head.

The chain (each event hashes the one before) shows an edited, removed or reordered
event. It cannot show a trail rewritten from some point on, or cut short, by someone
with write access to ledger.db: for that, a checkpoint names the head event's id and
hash, signed with the gateway's own key, and is kept outside the database in
`spool/audit/`. `verify()` checks the chain and every checkpoint against it, and that
every checkpoint the ledger records as written is still there to be checked: deleting
the checkpoints that would show a rewrite is noticed too.

A home restored from a backup (`gateway restore`) carries on from the backup's last
event N: event N+1 is `restore`, naming N and its hash, and restore signs a checkpoint
over it at once. Events the lost home wrote after N are gone, and checkpoints it signed
of them no longer match. Such a checkpoint (of an event after N, signed before the
restore) is not required, but counted as lost, and only when a checkpoint signed after
the restore vouches for the restore event: without the gateway's key, no one who can
write ledger.db can excuse a trail cut short by adding a `restore` row. What the chain
still proves: events 1..N are the lost home's own, unaltered; the restore happened after
them; nothing after it was altered. It cannot prove what the lost home did after N.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from gateway.adapters.files import publish
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home, user_name
from gateway.adapters.ledger import Ledger
from gateway.core.errors import LedgerDamaged, Rejected, SpoolDamaged, UsageError
from gateway.core.model import Event, utc

SCHEMA: Final = "gateway-checkpoint/1"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What `verify` found: events checked, checkpoints checked, the first problem and what
    to do about it."""

    events: int
    checkpoints: int
    broken: Event | None = None
    problem: str | None = None
    todo: str = "restore ledger.db from backup and investigate"
    restores: tuple[Restore, ...] = ()
    lost: tuple[int, ...] = ()  # event ids seen by checkpoints of a lost home, not required


@dataclasses.dataclass(frozen=True)
class Restore:
    """A `restore` event: its id, when, and the last event the backup held."""

    event_id: int
    at: str
    last_event: int
    backup: str


class AuditTrail:
    """The audit trail of one home: its checkpoints, their check, its export."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, gateway_id: str) -> None:
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.gateway_id = gateway_id

    @property
    def folder(self) -> Path:
        """Where checkpoints are kept."""
        path = self.home.spool / "audit"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def _writable(self) -> Path:
        """The checkpoints' folder, if this process can write its own files there."""
        folder = self.folder
        owner = folder.stat().st_uid
        if owner != os.geteuid() or not os.access(folder, os.W_OK | os.X_OK):
            raise SpoolDamaged(
                f"no audit checkpoint can be written in {folder}: it is owned by {user_name(owner)}"
                f" and this process runs as {user_name(os.geteuid())}; give it back to the "
                f"gateway's user (`chown -R {user_name(os.geteuid())} {folder}`)"
            )
        return folder

    def checkpoint(self) -> Path:
        """Sign the chain's head with the gateway's key and keep it; return the file.

        Raises `SpoolDamaged` when the folder is not the gateway's to write: a checkpoint
        that cannot be written is an error, never skipped in silence.
        """
        folder = self._writable()
        event_id, head = self.ledger.head()
        doc = {"schema": SCHEMA, "gateway": self.gateway_id, "event_id": event_id,
               "hash": head, "at": utc(self.ledger.clock.now())}  # fmt: skip
        final = folder / f"{event_id:012d}.checkpoint"
        tmp = final.with_name(f".{final.name}.{_own()}.tmp")
        own = self.ledger.own_key()
        if own is None:
            raise LedgerDamaged(
                "the ledger names no key of the gateway's own: restore ledger.db from backup"
            )
        self.keyring.sign_clear(io.BytesIO(json.dumps(doc, sort_keys=True).encode()), tmp, own)
        publish(tmp, final)
        self.ledger.record(
            "audit.checkpoint", detail={"event_id": event_id, "hash": head, "signer": own}
        )
        return final

    def verify(self) -> Verdict:
        """Check the chain, then each checkpoint's signature and that the chain still holds
        it, excusing those a vouched restore explains (see the module's text)."""
        events, broken = self.ledger.verify_chain()
        if broken is not None:
            return Verdict(events, 0, broken, f"event {broken.id} was edited, removed or reordered")
        own = self.ledger.own_keys()
        restores = tuple(Restore(e.id, e.at, int(d["last_event"]), str(d["backup"]))
                         for e in self.ledger.events_of("restore")
                         if (d := json.loads(e.detail or "{}")))  # fmt: skip
        folder = self.home.spool / "audit"
        found = set(folder.glob("*.checkpoint"))
        checked, good, lost = 0, [], []
        for path in sorted(found):
            plain = path.with_name(f".{path.name}.{_own()}.plain")
            try:
                with path.open("rb"):  # unreadable: say so, not "not signed"
                    pass
            except OSError as err:
                return Verdict(events, checked, None,
                               f"checkpoint {path.name} cannot be read ({err.strerror})",
                               todo=f"check the owner and permissions of {folder}")  # fmt: skip
            try:
                self.keyring.open_message(path, plain, own, encrypted=False, max_output=64 * 1024,
                                          decrypts=False)  # fmt: skip
                doc = json.loads(plain.read_text())
            except (Rejected, ValueError) as problem:
                return Verdict(events, checked, None,
                               f"checkpoint {path.name} is not signed by this gateway: {problem}")  # fmt: skip
            finally:
                plain.unlink(missing_ok=True)
            event_id, expected = int(doc["event_id"]), str(doc["hash"])
            if event_id <= events and (
                not event_id or self.ledger.event_hash(event_id) == expected
            ):
                checked += 1
                good.append(event_id)
                continue
            gap = next((r for r in restores
                        if r.last_event < event_id and str(doc.get("at", "")) <= r.at), None)  # fmt: skip
            if gap is not None:
                lost.append((path.name, event_id, gap))
                continue
            if event_id > events:
                return Verdict(events, checked, None,
                               f"the trail ends at event {events}, but checkpoint {path.name} saw event {event_id}: "
                               "events were removed from its end")  # fmt: skip
            return Verdict(events, checked, None,
                           f"event {event_id} is not the one checkpoint {path.name} signed: the trail was rewritten")  # fmt: skip
        for name, event_id, gap in lost:
            if not any(g >= gap.event_id for g in good):
                return Verdict(events, checked, None,
                               f"checkpoint {name} saw event {event_id}, after the backup restored at event "
                               f"{gap.event_id}, but no checkpoint signs that restore: the trail may have been "
                               "cut short")  # fmt: skip
        for event in self.ledger.events_of("audit.checkpoint"):  # last: what is there holds
            signed = json.loads(event.detail or "{}").get("event_id")  # None: detail erased
            kept = folder / f"{signed:012d}.checkpoint" if isinstance(signed, int) else None
            if kept is not None and kept not in found:
                return Verdict(events, checked, None,
                               f"checkpoint {kept.name}, which the ledger records as written, is "
                               f"missing from {folder}",
                               todo="restore spool/audit from backup and investigate who removed it")  # fmt: skip
        return Verdict(events, checked, restores=restores, lost=tuple(e for _, e, _ in lost))

    def export(self, since: str | None) -> list[dict[str, object]]:
        """The events at or after `since` (ISO 8601 time; without an offset, UTC, as the
        ledger's times are), as plain values; the read is logged."""
        start = None
        if since is not None:
            try:
                when = datetime.fromisoformat(since)
                start = utc((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())
            except ValueError:
                raise UsageError(
                    f"--since {since!r} is not a time: write it as 2026-11-01T00:00:00Z"
                ) from None
        rows = [
            dataclasses.asdict(e) for e in self.ledger.events() if start is None or e.at >= start
        ]
        for row in rows:
            row["detail"] = json.loads(str(row["detail"])) if row["detail"] else None
        self.ledger.record("audit.export", detail={"since": since, "events": len(rows)})
        return rows


def _own() -> str:
    """A temporary name's part no other process or thread uses: `gateway check` verifies
    every minute beside the daemon's checkpoints and an operator's `audit verify`."""
    return f"{os.getpid()}-{threading.get_ident()}"
