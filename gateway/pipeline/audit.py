"""The audit trail's checks: the hash chain, and signed checkpoints of its head.

The chain (each event hashes the one before) shows an edited, removed or reordered
event. It cannot show a trail rewritten from some point on, or cut short, by someone
with write access to ledger.db: for that, a checkpoint names the head event's id and
hash, signed with the gateway's own key, and is kept outside the database in
`spool/audit/`. `verify()` checks the chain and every checkpoint against it, and that
every checkpoint the ledger records as written is still there to be checked: deleting
the checkpoints that would show a rewrite is noticed too.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from datetime import datetime
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
        """Check the chain, then each checkpoint's signature and that the chain still holds it."""
        events, broken = self.ledger.verify_chain()
        if broken is not None:
            return Verdict(events, 0, broken, f"event {broken.id} was edited, removed or reordered")
        own = self.ledger.own_keys()
        checked = 0
        folder = self.home.spool / "audit"
        found = set(folder.glob("*.checkpoint"))
        for event_id in self.ledger.checkpoints():
            path = folder / f"{event_id:012d}.checkpoint"
            if path not in found:
                return Verdict(events, checked, None,
                               f"checkpoint {path.name}, which the ledger records as written, is "
                               f"missing from {folder}",
                               todo="restore spool/audit from backup and investigate who removed it")  # fmt: skip
        for path in sorted(found):
            plain = path.with_name(f".{path.name}.plain")
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
            if event_id > events:
                return Verdict(events, checked, None,
                               f"the trail ends at event {events}, but checkpoint {path.name} saw event {event_id}: "
                               "events were removed from its end")  # fmt: skip
            if event_id and self.ledger.event_hash(event_id) != expected:
                return Verdict(events, checked, None,
                               f"event {event_id} is not the one checkpoint {path.name} signed: the trail was rewritten")  # fmt: skip
            checked += 1
        return Verdict(events, checked)

    def export(self, since: str | None) -> list[dict[str, object]]:
        """The events at or after `since` (ISO 8601 time), as plain values; the read is logged."""
        start = None
        if since is not None:
            try:
                start = utc(datetime.fromisoformat(since).timestamp())
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
