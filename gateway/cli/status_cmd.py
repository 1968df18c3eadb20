"""`gateway status`: what is waiting, moving, overdue or stuck, per partner."""

from __future__ import annotations

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
    """Per partner: queued, in flight, awaiting receipt, overdue, held, failed.

    Also warns of keys that expire within keys.warn_days, or no longer work.

    \b
    Example:
      gateway status
    """
    now = gw.clock.now()
    counts = gw.ledger.counts(utc(now - gw.settings.receipts_overdue_after_seconds))
    partners = [p.id for p in gw.ledger.partners()]
    if any(partner is None for partner, _ in counts):
        partners.append("(unknown)")
    rows: list[dict[str, Any]] = []
    for pid in partners:
        ledger_id = None if pid == "(unknown)" else pid
        row: dict[str, Any] = {"partner": pid}
        for column, states in STATUS_COLUMNS.items():
            row[column] = sum(counts.get((ledger_id, s), 0) for s in states)
        rows.append(row)
    warnings = [f.what + f": {f.todo}" for f in health.keys(gw) if f.level != "ok"]
    result = {"partners": rows, "warnings": warnings}

    def text() -> str:
        head = f"{'partner':<20}" + "".join(f"{c.replace('_', ' '):>17}" for c in STATUS_COLUMNS)
        lines = [head] + [
            f"{r['partner']:<20}" + "".join(f"{r[c]:>17}" for c in STATUS_COLUMNS) for r in rows
        ]
        return "\n".join(lines + [f"warning: {w}" for w in warnings])

    emit(result, as_json, text)
