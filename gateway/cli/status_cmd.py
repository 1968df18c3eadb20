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

#: Duty columns of each partner's row: open duties due within duties.warn_days, open
#: duties past their period, and duties met within it.
DUTY_COLUMNS = ("due_soon", "late", "met_on_time")


@click.command("status")
@json_option
@with_gateway
def command(gw: Gateway, as_json: bool) -> None:
    """Per partner: health, queued, in flight, awaiting receipt, overdue, held, failed;
    and its duties: due within duties.warn_days, late, and met on time.

    Also warns of keys that expire within keys.warn_days, or no longer work, of late
    duties, and of batch notifications (e.g. at least yearly) coming due. Exits 0 when
    nothing needs attention, 1 when something does (a package held, failed or overdue, a
    partner down, a warning); other codes are errors (see the table).

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
    standings = gw.duties.standings()
    met = gw.duties.obligations.met_in_time()
    for row in rows:
        mine = [s.state for s in standings if s.duty.partner == row["partner"]]
        row["due_soon"], row["late"] = mine.count("due-soon"), mine.count("late")
        row["met_on_time"] = met.get(row["partner"], 0)
    warnings = [f.what + f": {f.todo}" for f in health.keys(gw) if f.level != "ok"]
    warnings += [f"{s.duty.duty} {s.duty.package_id} ({s.duty.partner}, {s.duty.regime}) is late: "
                 f"it was due by {s.duty.due_at}" for s in standings if s.state == "late"]  # fmt: skip
    soon = utc(now + gw.settings.duties_warn_days * 86400)
    warnings += [f"{b['regime']} notifications to {b['partner']}: next batch due by {b['next_due']} "
                 f"(last sent {b['last_sent'] or 'never'})" for b in gw.duties.batches()
                 if b["next_due"] <= soon]  # fmt: skip
    attention = bool(warnings) or any(
        r["health"] == "down" or r["held"] or r["failed"] or r["overdue"] for r in rows
    )
    result = {"partners": rows, "warnings": warnings, "attention": attention}

    def text() -> str:
        columns = [*STATUS_COLUMNS, *DUTY_COLUMNS]
        head = f"{'partner':<20}{'health':>9}" + "".join(
            f"{c.replace('_', ' '):>17}" for c in columns
        )
        lines = [head] + [
            f"{r['partner']:<20}{r['health']:>9}" + "".join(f"{r[c]:>17}" for c in columns)
            for r in rows
        ]
        return "\n".join(lines + [f"warning: {w}" for w in warnings])

    emit(result, as_json, text)
    if attention:
        sys.exit(1)
