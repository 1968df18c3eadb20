"""The audit trail's checks: the hash chain, and signed checkpoints of its head.

The chain (each event hashes the one before) shows an edited, removed or reordered
event. It cannot show a trail rewritten from some point on, or cut short, by someone
with write access to ledger.db: for that, a checkpoint names the head event's id and
hash, signed with the gateway's own key, and is kept outside the database in
`spool/audit/`. `verify()` checks the chain and every checkpoint against it.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from gateway.adapters.files import publish
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.errors import LedgerDamaged, Rejected, UsageError
from gateway.core.model import Event, utc

SCHEMA: Final = "gateway-checkpoint/1"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What `verify` found: events checked, checkpoints checked, and the first problem."""

    events: int
    checkpoints: int
    broken: Event | None = None
    problem: str | None = None
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

    def checkpoint(self) -> Path:
        """Sign the chain's head with the gateway's key and keep it; return the file."""
        event_id, head = self.ledger.head()
        doc = {"schema": SCHEMA, "gateway": self.gateway_id, "event_id": event_id,
               "hash": head, "at": utc(self.ledger.clock.now())}  # fmt: skip
        final = self.folder / f"{event_id:012d}.checkpoint"
        tmp = final.with_name(f".{final.name}.tmp")
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
        checked, good, lost = 0, [], []
        for path in sorted(self.folder.glob("*.checkpoint")):
            plain = path.with_name(f".{path.name}.plain")
            try:
                self.keyring.open_message(path, plain, own, encrypted=False, max_output=64 * 1024)
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
