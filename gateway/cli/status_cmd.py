"""`gateway status`: what is waiting, moving, overdue or stuck, per partner."""

from __future__ import annotations

import sys
from typing import Any

import click

from gateway.admin import health
from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, with_gateway
from gateway.core.lifecycle import STATUS_COLUMNS
from gateway.core.model import utc


@click.command("status")
@json_option
@with_gateway
def command(gw: Gateway, as_json: bool) -> None:
    """Per partner: health, queued, in flight, awaiting receipt, overdue, held, failed.

    Also warns of keys that expire within keys.warn_days, or no longer work. Exits 0
    when nothing needs attention, 1 when something does (a package held, failed or
    overdue, a partner down, a key warning); other codes are errors (see the table).

    \b
    Example:
      gateway status
    """
    now = gw.clock.now()
    counts = gw.ledger.counts(utc(now - gw.settings.receipts_overdue_after_seconds))
    known = {p.id: p for p in gw.ledger.partners()}
    contacts = gw.ledger.contacts()
    partners = list(known)
    if any(partner is None for partner, _ in counts):
        partners.append("(unknown)")
    rows: list[dict[str, Any]] = []
    for pid in partners:
        ledger_id = None if pid == "(unknown)" else pid
        row: dict[str, Any] = {"partner": pid, "health": "unknown"}
        for column, states in STATUS_COLUMNS.items():
            row[column] = sum(counts.get((ledger_id, s), 0) for s in states)
        if pid in known:
            stuck = bool(row["held"] or row["failed"])
            row["health"] = health.contact(known[pid], contacts.get(pid), stuck)["health"]
        rows.append(row)
    warnings = [f.what + f": {f.todo}" for f in health.keys(gw) if f.level != "ok"]
    attention = bool(warnings) or any(
        r["health"] == "down" or r["held"] or r["failed"] or r["overdue"] for r in rows
    )
    result = {"partners": rows, "warnings": warnings, "attention": attention}

    def text() -> str:
        head = f"{'partner':<20}{'health':>9}" + "".join(
            f"{c.replace('_', ' '):>17}" for c in STATUS_COLUMNS
        )
        lines = [head] + [
            f"{r['partner']:<20}{r['health']:>9}" + "".join(f"{r[c]:>17}" for c in STATUS_COLUMNS)
            for r in rows
        ]
        return "\n".join(lines + [f"warning: {w}" for w in warnings])

    emit(result, as_json, text)
    if attention:
        sys.exit(1)
