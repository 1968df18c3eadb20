"""Read-only figures of the ledger for the metrics (`gateway.pipeline.metrics`).

Kept beside `ledger.py`, over its connection, so that module stays about keeping the
record. Each figure is one query over the packages or the events; on a 1,000,000-event
ledger the event counts read the whole table, so they are gathered at a scrape or a
textfile write, never per package.
"""

from __future__ import annotations

from collections import defaultdict

from gateway.adapters.ledger import Ledger
from gateway.core.lifecycle import BACKLOG

#: Seconds between two julianday() values.
_DAY = 86400.0


def packages(ledger: Ledger) -> list[tuple[str, str, str, int]]:
    """(direction, partner, state, count) for every combination present."""
    rows = ledger.db.execute(
        "SELECT direction, coalesce(partner, ''), state, count(*) FROM packages GROUP BY 1, 2, 3"
    )
    return [(str(d), str(p), str(s), int(n)) for d, p, s, n in rows]


def oldest_pending(ledger: Ledger) -> dict[str, str]:
    """Per partner, when its oldest outbound package not yet delivered was taken in."""
    marks = ", ".join("?" * len(BACKLOG))
    rows = ledger.db.execute(
        f"SELECT coalesce(partner, ''), min(created_at) FROM packages "  # noqa: S608 - placeholders only
        f"WHERE direction = 'out' AND state IN ({marks}) GROUP BY 1",
        sorted(BACKLOG),
    )
    return {str(p): str(at) for p, at in rows}


def event_counts(ledger: Ledger) -> dict[tuple[str, str], int]:
    """How many events of each (action, partner) the trail holds."""
    rows = ledger.db.execute(
        "SELECT action, coalesce(partner, ''), count(*) FROM events GROUP BY 1, 2"
    )
    return {(str(a), str(p)): int(n) for a, p, n in rows}


def to_delivered(ledger: Ledger) -> dict[str, list[float]]:
    """Per partner, seconds from intake to delivery of each outbound package delivered."""
    rows = ledger.db.execute(
        "SELECT coalesce(partner, ''), (julianday(delivered_at) - julianday(created_at)) * ? "
        "FROM packages WHERE direction = 'out' AND delivered_at IS NOT NULL",
        [_DAY],
    )
    found: dict[str, list[float]] = defaultdict(list)
    for partner, seconds in rows:
        found[str(partner)].append(max(0.0, float(seconds)))
    return found


def to_acknowledged(ledger: Ledger) -> dict[str, list[float]]:
    """Per partner, seconds from intake to the partner's receipt of each acknowledged package."""
    rows = ledger.db.execute(
        "SELECT coalesce(p.partner, ''), (julianday(e.at) - julianday(p.created_at)) * ? "
        "FROM events e JOIN packages p ON p.package_id = e.package_id "
        "WHERE e.action = 'receipt' AND e.state = 'acknowledged'",
        [_DAY],
    )
    found: dict[str, list[float]] = defaultdict(list)
    for partner, seconds in rows:
        found[str(partner)].append(max(0.0, float(seconds)))
    return found


def last_event(ledger: Ledger, action: str) -> str | None:
    """When the newest event of `action` was recorded, if any."""
    row = ledger.db.execute("SELECT max(at) FROM events WHERE action = ?", [action]).fetchone()
    return str(row[0]) if row and row[0] else None
