"""Receipts (SPEC section 5): the signed answer that says these exact bytes arrived.

Pure code: the receipt value, its strict parser, and the decision whether a receipt
closes one of our packages.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from typing import Any, Final

from gateway.core.errors import InputRefused, Rejected, UsageError
from gateway.core.lifecycle import State
from gateway.core.model import Package
from gateway.core.names import authority_id, package_id
from gateway.core.text import read_json

SCHEMA: Final = "gateway-receipt/1"
MAX_BYTES: Final = 64 * 1024
DISPOSITIONS: Final = ("accepted", "rejected")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z")


@dataclasses.dataclass(frozen=True)
class Receipt:
    """One receipt: who says what about which package's ciphertext."""

    package_id: str
    sender: str  # "from" on the wire
    to: str
    received_at: str
    ciphertext_sha256: str
    disposition: str
    reason: str | None = None

    def to_json(self) -> bytes:
        """The receipt as UTF-8 JSON with the wire's field names."""
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "package_id": self.package_id,
            "from": self.sender,
            "to": self.to,
            "received_at": self.received_at,
            "ciphertext_sha256": self.ciphertext_sha256,
            "disposition": self.disposition,
        }
        if self.reason is not None:
            doc["reason"] = self.reason
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def parse_receipt(data: bytes) -> Receipt:
    """Parse and check a receipt's JSON; anything unexpected raises `Rejected` naming it."""
    try:
        doc = read_json(data, MAX_BYTES, "the receipt")
    except InputRefused as problem:
        raise Rejected(str(problem)) from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise Rejected(f"the receipt is not a {SCHEMA} object")
    allowed = {
        "schema",
        "package_id",
        "from",
        "to",
        "received_at",
        "ciphertext_sha256",
        "disposition",
        "reason",
    }
    if extra := sorted(set(doc) - allowed):
        raise Rejected(f"the receipt has unknown fields: {', '.join(extra)}")
    for key in allowed - {"reason"}:
        if not isinstance(doc.get(key), str):
            raise Rejected(f"receipt field {key!r} must be a string")
    disposition, reason = doc["disposition"], doc.get("reason")
    if disposition not in DISPOSITIONS:
        raise Rejected("receipt field 'disposition' must be 'accepted' or 'rejected'")
    if (disposition == "rejected") != isinstance(reason, str) or (
        reason is not None and len(reason) > 4096
    ):
        raise Rejected("a receipt carries a reason (a string) when, and only when, it is rejected")
    if not _HEX64.fullmatch(doc["ciphertext_sha256"]):
        raise Rejected("receipt field 'ciphertext_sha256' must be 64 lowercase hex digits")
    try:
        datetime.fromisoformat(doc["received_at"])
        valid_time = bool(_TIME.fullmatch(doc["received_at"]))
    except ValueError:
        valid_time = False
    if not valid_time:
        raise Rejected("receipt field 'received_at' must be UTC time as 2026-11-28T18:00:05Z")
    try:
        authority_id(doc["from"]), authority_id(doc["to"]), package_id(doc["package_id"])
    except UsageError as problem:
        raise Rejected(f"the receipt names no valid party or package: {problem}") from None
    return Receipt(doc["package_id"], doc["from"], doc["to"], doc["received_at"],
                   doc["ciphertext_sha256"], disposition, reason)  # fmt: skip


def closes(receipt: Receipt, package: Package, partner: str, us: str) -> State:
    """The state a receipt moves our package to, or `Rejected` saying why it cannot."""
    if receipt.sender != partner or receipt.to != us:
        raise Rejected(
            f"the receipt is from {receipt.sender} to {receipt.to}, not from {partner} to {us}"
        )
    if package.direction != "out" or package.partner != partner:
        raise Rejected(f"{package.package_id} was not sent to {partner}")
    if receipt.ciphertext_sha256 != package.ciphertext_sha256:
        raise Rejected("the receipt's ciphertext_sha256 is not that of the package sent")
    if package.state not in (State.SEALED, State.PUBLISHED, State.DELIVERED):
        raise Rejected(f"{package.package_id} is {package.state}: it awaits no receipt")
    return State.ACKNOWLEDGED if receipt.disposition == "accepted" else State.REFUSED
