"""The values the ledger keeps: partners, packages and audit events. Pure data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

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
    receipt_state: str | None = None
    retry_from: float | None = (
        None  # when the give-up clock started: intake, or an operator's retry  # inbound: "due" until our receipt is uploaded, then "sent"
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

    def summary(self) -> str:
        """One log line: what happened to what, and why if it went wrong. No payload, no keys."""
        words = [self.action, self.package_id or "", self.state or "", self.partner or ""]
        detail = json.loads(self.detail) if self.detail else {}
        why = detail.get("error") or detail.get("reason")
        return " ".join(w for w in words if w) + (f": {why}" if why else "")

    def expected_hash(self) -> str:
        """The hash this event must carry, given its content and the hash before it."""
        return chain_hash(chained(dataclasses.astuple(self)[:10], self.detail_sha256))


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
class Placed:
    """Where a file was made available to a partner, and whether it was there already."""

    path: str
    already_there: bool


@dataclasses.dataclass(frozen=True)
class Arrival:
    """A file a partner left for the gateway: its name (of the contract) and size."""

    name: str
    size: int
