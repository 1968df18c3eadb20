"""The receipt parser and the rule that decides whether a receipt closes a package."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import Rejected
from gateway.core.lifecycle import State
from gateway.core.model import Package
from gateway.core.names import new_package_id
from gateway.core.receipts import Receipt, closes, parse_receipt

PID = new_package_id("GB-ACRO", 0)
HASH = "ab" * 32
GOOD = Receipt(PID, "US-NCB", "GB-ACRO", "2026-11-28T18:00:05Z", HASH, "accepted")


def doc(**changes: object) -> bytes:
    """A receipt document with some fields changed (None removes one)."""
    base = json.loads(GOOD.to_json())
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return json.dumps(base).encode()


def sent(state: State = State.DELIVERED, partner: str = "US-NCB") -> Package:
    return Package(package_id=PID, direction="out", state=state, created_at="x", updated_at="x",
                   partner=partner, ciphertext_sha256=HASH)  # fmt: skip


def test_a_receipt_round_trips() -> None:
    assert parse_receipt(GOOD.to_json()) == GOOD
    refused = Receipt(
        PID, "US-NCB", "GB-ACRO", "2026-11-28T18:00:05.123Z", HASH, "rejected", "unreadable"
    )
    assert parse_receipt(refused.to_json()) == refused


@pytest.mark.parametrize(
    ("changes", "said"),
    [
        ({"schema": "gateway-receipt/2"}, "not a gateway-receipt/1"),
        ({"extra": "x"}, "unknown fields: extra"),
        ({"package_id": None}, "'package_id' must be a string"),
        ({"disposition": "maybe"}, "'accepted' or 'rejected'"),
        ({"disposition": "rejected"}, "when, and only when"),
        ({"reason": "why"}, "when, and only when"),
        ({"ciphertext_sha256": "AB" * 32}, "64 lowercase hex"),
        ({"received_at": "yesterday"}, "UTC time"),
        ({"received_at": "2026-13-01T00:00:00Z"}, "UTC time"),
        ({"from": "us-ncb"}, "no valid party"),
        ({"package_id": "../../etc/passwd"}, "no valid party or package"),
    ],
)
def test_a_malformed_receipt_is_rejected_naming_the_problem(
    changes: dict[str, object], said: str
) -> None:
    with pytest.raises(Rejected, match=said):
        parse_receipt(doc(**changes))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_receipt_or_rejected(data: bytes) -> None:
    """Nothing but `Rejected` ever escapes: a partner cannot crash the gateway with a receipt."""
    with contextlib.suppress(Rejected):
        parse_receipt(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["schema", "package_id", "from", "to", "received_at",
                                        "ciphertext_sha256", "disposition", "reason"]),
                       st.none() | st.integers() | st.text(max_size=70)))  # fmt: skip
def test_any_json_object_is_a_receipt_or_rejected(fields: dict[str, object]) -> None:
    try:
        receipt = parse_receipt(json.dumps(fields).encode())
    except Rejected:
        return
    assert parse_receipt(receipt.to_json()) == receipt


def test_closes_moves_a_delivered_package_by_disposition() -> None:
    assert closes(GOOD, sent(), "US-NCB", "GB-ACRO") is State.ACKNOWLEDGED
    refused = Receipt(PID, "US-NCB", "GB-ACRO", GOOD.received_at, HASH, "rejected", "no")
    assert closes(refused, sent(), "US-NCB", "GB-ACRO") is State.REFUSED
    assert closes(GOOD, sent(State.SEALED), "US-NCB", "GB-ACRO") is State.ACKNOWLEDGED


@pytest.mark.parametrize(
    ("receipt", "package", "said"),
    [
        (GOOD, sent(partner="FR-CJN"), "was not sent to US-NCB"),
        (
            Receipt(PID, "FR-CJN", "GB-ACRO", GOOD.received_at, HASH, "accepted"),
            sent(),
            "not from US-NCB",
        ),
        (
            Receipt(PID, "US-NCB", "DE-BJ", GOOD.received_at, HASH, "accepted"),
            sent(),
            "not from US-NCB to GB-ACRO",
        ),
        (
            Receipt(PID, "US-NCB", "GB-ACRO", GOOD.received_at, "cd" * 32, "accepted"),
            sent(),
            "ciphertext_sha256",
        ),
        (GOOD, sent(State.ACKNOWLEDGED), "awaits no receipt"),
        (GOOD, sent(State.CANCELLED), "awaits no receipt"),
    ],
)
def test_closes_refuses_what_does_not_match(receipt: Receipt, package: Package, said: str) -> None:
    with pytest.raises(Rejected, match=said):
        closes(receipt, package, "US-NCB", "GB-ACRO")
