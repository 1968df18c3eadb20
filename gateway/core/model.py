"""The values the ledger keeps: partners, packages and audit events. Pure data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gateway.core.lifecycle import State


def utc(ts: float) -> str:
    """A timestamp as UTC ISO 8601 with milliseconds, e.g. 2026-11-28T18:00:00.000Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def chain_hash(fields: Sequence[object]) -> str:
    """SHA-256 over an event's fields, `prev_hash` last, in one canonical JSON form."""
    canonical = json.dumps(list(fields), separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Partner:
    """A registered partner agency."""

    id: str
    transport: str  # "push": we log in to its server; "pull": it logs in to our drop server
    openpgp_key: str
    added_at: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    upload_dir: str | None = None
    download_dir: str | None = None
    ssh_key: str | None = None  # pull: the key it logs in with, 'TYPE BASE64'
    hide_recipient: int = 1
    enabled: int = 1
    approval: str | None = None  # kinds that wait for a second operator: "all", or "k1,k2"
    ssh_legacy: int = 0  # push: also offer its old server AES-CBC and HMAC-SHA1, after ours


@dataclasses.dataclass(frozen=True)
class Package:
    """One package as the ledger knows it."""

    package_id: str
    direction: str  # "out" or "in"
    state: State
    created_at: str
    updated_at: str
    partner: str | None = None
    kind: str | None = None
    payload_name: str | None = None
    payload_size: int | None = None
    payload_sha256: str | None = None
    reference: str | None = None
    legal_basis: str | None = None
    marking: str | None = None
    in_reply_to: str | None = None
    sender_key: str | None = None
    recipient_key: str | None = None
    ciphertext_sha256: str | None = None
    ciphertext_size: int | None = None
    delivered_at: str | None = None
    receipt_state: str | None = None  # inbound: "due" until our receipt is uploaded, then "sent"
    retry_from: float | None = (
        None  # when the give-up clock started: intake, or an operator's retry
    )
    failures: int = 0  # failed attempts so far
    next_attempt_at: float | None = None
    last_error: str | None = None
    #: What retention erased of it, and when: JSON, e.g. {"inbound": "2026-12-06T..."}.
    erased: str | None = None

    @staticmethod
    def from_row(row: dict[str, Any]) -> Package:
        """Build from a `packages` row."""
        return Package(**{**row, "state": State(row["state"])})


#: How a long transfer shows its progress: given a label and the total bytes, a context
#: for the transfer's length, yielding the function to call with each count of bytes done.
#: The CLI passes one on a terminal (a progress bar); elsewhere there is none.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


#: Events logged as warnings: a package stopped for an operator, refused by the partner,
#: rejected or quarantined, or waiting too long for its receipt.
WARNING_STATES: Final = frozenset({"held", "failed", "refused", "rejected"})
WARNING_ACTIONS: Final = frozenset(
    {"quarantine", "receipt.quarantined", "fetch.refused", "receipt.overdue"}
)


@dataclasses.dataclass(frozen=True)
class Event:
    """One row of the audit trail."""

    id: int
    at: str
    actor: str
    action: str
    category: str | None
    partner: str | None
    package_id: str | None
    state: str | None
    detail: str | None
    prev_hash: str
    hash: str
    #: SHA-256 of `detail`, chained in its place, so that retention can erase a detail
    #: and the chain still verifies. None on events written before it existed: their
    #: chain covers the detail itself, and their details are never erased.
    detail_sha256: str | None = None

    def submitter(self) -> str:
        """Of an outbound package's first event: who brought it in, the owner of the file
        dropped in the spool if it was dropped, else the command's actor."""
        detail = json.loads(self.detail) if self.detail else {}
        return str(detail.get("dropped_by") or self.actor)

    def warns(self) -> bool:
        """Whether this event needs an operator's eye: logged as a warning, not as info."""
        return self.state in WARNING_STATES or self.action in WARNING_ACTIONS

    def fields(self) -> dict[str, str | None]:
        """The event's fields of a log line: package id, partner, action, state, error."""
        detail = json.loads(self.detail) if self.detail else {}
        return {"package_id": self.package_id, "partner": self.partner, "action": self.action,
                "state": self.state, "error": detail.get("error") or detail.get("reason")}  # fmt: skip

    def summary(self) -> str:
        """One log line: what happened to what, and why if it went wrong. No payload, no keys."""
        words = [self.action, self.package_id or "", self.state or "", self.partner or ""]
        detail = json.loads(self.detail) if self.detail else {}
        why = detail.get("error") or detail.get("reason")
        return " ".join(w for w in words if w) + (f": {why}" if why else "")

    def expected_hash(self) -> str:
        """The hash this event must carry, given its content and the hash before it."""
        # The fields named, not dataclasses.astuple: that deep-copies every event hashed.
        fields = (self.id, self.at, self.actor, self.action, self.category, self.partner,
                  self.package_id, self.state, self.detail, self.prev_hash)  # fmt: skip
        return chain_hash(chained(fields, self.detail_sha256))


def detail_digest(detail: str) -> str:
    """The SHA-256 of an event's detail, as chained."""
    return hashlib.sha256(detail.encode()).hexdigest()


def chained(fields: Sequence[object], detail_sha256: str | None) -> Sequence[object]:
    """An event's first ten fields as the chain covers them: the detail's digest in place
    of the detail, where the event has one."""
    if detail_sha256 is None:
        return fields
    return [*fields[:8], f"sha256:{detail_sha256}", fields[9]]


@dataclasses.dataclass(frozen=True)
class Contact:
    """One partner's health, as the ledger keeps it: its last successful contact, its last
    failure and why, and since when it is down (times are epoch seconds)."""

    partner: str
    last_ok: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    down_since: float | None = None
    failures: int = 0  # failed contacts in a row

    @property
    def status(self) -> str:
        """`down` while its last contact failed, `ok` once one succeeded, else `unknown`."""
        return "down" if self.down_since is not None else "ok" if self.last_ok else "unknown"

    def worth_warning(self) -> bool:
        """Whether this failure is logged: the first, then the 2nd, 4th, 8th... in a row, so
        a partner down for a day at a 30 s poll logs 12 lines, not 2,880."""
        return self.failures > 0 and self.failures & (self.failures - 1) == 0


@dataclasses.dataclass(frozen=True)
class Placed:
    """Where a file was made available to a partner, and whether it was there already."""

    path: str
    already_there: bool


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A file to make available to a partner: the local file, its name there, its SHA-256."""

    local: Path
    name: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class Arrival:
    """A file a partner left for the gateway: its name (of the contract) and size."""

    name: str
    size: int


@dataclasses.dataclass(frozen=True)
class Wanted:
    """An arrival to bring into the spool as `local`, unless it grows past `max_bytes`."""

    arrival: Arrival
    local: Path
    max_bytes: int
