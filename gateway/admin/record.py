"""`gateway audit show`: the DPA 2018 s.62 record of one package, from the ledger alone.

Who (the operator or producer who sent it, or the partner it came from; every actor of
its events), when, what (kind, reference, marking, payload name, size and SHA-256: never
its contents), to or from whom (the partner and its key), under which basis (the
manifest's `legal_basis`, with the regime's title and citation, and the duty it started),
every event of the package, and every consultation of it:
events of category `consultation` that name it (earlier `audit show`s, approvals), and
each `audit export` whose window held at least one of its events. Reading the record is
itself recorded, as a consultation (`audit.show`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gateway.app.gateway import Gateway
from gateway.core.model import Event, utc

#: The package's fields that say what it is and where it went, in the order shown.
WHAT = ("kind", "reference", "marking", "payload_name", "payload_size", "payload_sha256",
        "ciphertext_sha256", "ciphertext_size", "in_reply_to")  # fmt: skip


def _event(e: Event) -> dict[str, Any]:
    return {"id": e.id, "at": e.at, "actor": e.actor, "action": e.action,
            "category": e.category, "state": e.state,
            "detail": json.loads(e.detail) if e.detail else None}  # fmt: skip


def _exports_covering(gw: Gateway, events: list[Event]) -> list[Event]:
    """The `audit export`s after the package's first event that included one of its events.

    An export held every event at or after its `--since` that existed when it ran.
    """
    found = []
    for export in gw.ledger.events_of("audit.export", events[0].id):
        since = (json.loads(export.detail) if export.detail else {}).get("since")
        start = utc(datetime.fromisoformat(since).timestamp()) if since else None
        if any(e.id < export.id and (start is None or e.at >= start) for e in events):
            found.append(export)
    return found


def _basis(gw: Gateway, regime_id: str | None) -> dict[str, Any] | None:
    """The regime a package travels under, as the shipped and the home's regimes say."""
    regime = gw.duties.regimes.get(regime_id) if regime_id else None
    if regime is None:
        return None
    return {"title": regime.title, "citation": regime.citation,
            "use_restrictions": list(regime.use_restrictions)}  # fmt: skip


def _duty(gw: Gateway, package_id: str) -> dict[str, Any] | None:
    """The duty the package started, its last day and what met it, if it started one."""
    for duty in gw.duties.obligations.duties(package_id):
        return {"duty": duty.duty, "due_at": duty.due_at, "met_at": duty.met_at,
                "met_by": duty.met_by}  # fmt: skip
    return None


def record(gw: Gateway, package_id: str) -> dict[str, Any]:
    """The s.62 record of one package, as plain values; the consultation is recorded."""
    package = gw.ledger.package(package_id)
    events = list(gw.ledger.events(package_id))
    consulted = [e for e in events if e.category == "consultation"]
    consulted += _exports_covering(gw, events) if events else []
    outbound = package.direction == "out"
    result = {
        "package_id": package.package_id,
        "direction": package.direction,
        "state": package.state.value,
        "who": events[0].submitter() if outbound and events else package.partner,
        "actors": sorted({e.actor for e in events}),
        "when": {
            "taken_in": package.created_at,
            "delivered": package.delivered_at,
            "last_change": package.updated_at,
        },
        "what": {k: getattr(package, k) for k in WHAT},
        "recipient" if outbound else "sender": {
            "partner": package.partner,
            "key": package.recipient_key if outbound else package.sender_key,
        },
        "legal_basis": package.legal_basis,
        "basis": _basis(gw, package.legal_basis),
        "duty": _duty(gw, package_id),
        "approvals": [_event(e) for e in events if e.action in ("approve", "disapprove")],
        "disclosures": [_event(e) for e in events if e.category == "disclosure"],
        "events": [_event(e) for e in events],
        "consultations": [_event(e) for e in sorted(consulted, key=lambda e: e.id)],
    }
    gw.ledger.record("audit.show", package_id=package_id, partner=package.partner)
    return result


def text(doc: dict[str, Any]) -> list[str]:
    """The record as lines for a terminal (the caller escapes what a partner wrote)."""
    party = "recipient" if "recipient" in doc else "sender"
    lines = [
        f"package      {doc['package_id']} ({doc['direction']}bound, {doc['state']})",
        f"who          {doc['who'] or '-'}; actors: {', '.join(doc['actors'])}",
        "when         " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in doc["when"].items() if v),
        "what         " + ", ".join(f"{k} {v}" for k, v in doc["what"].items() if v is not None),
        f"{party:<12} {doc[party]['partner'] or '-'} (key {doc[party]['key'] or '-'})",
        f"legal basis  {doc['legal_basis'] or '(none recorded)'}"
        + (f": {doc['basis']['title']} ({doc['basis']['citation']})" if doc["basis"] else ""),
        "duty         " + (", ".join(f"{k.replace('_', ' ')} {v}" for k, v in doc["duty"].items() if v)
                           if doc["duty"] else "none"),
    ]  # fmt: skip
    for title in ("approvals", "disclosures", "events", "consultations"):
        lines.append(f"{title}:" if doc[title] else f"{title}: none")
        lines += [
            f"  {e['at']}  {e['actor']:<10} {e['action']:<16} {e['category'] or '':<12} "
            f"{e['state'] or '':<12} {json.dumps(e['detail'], ensure_ascii=False) if e['detail'] else ''}".rstrip()
            for e in doc[title]
        ]
    return lines
