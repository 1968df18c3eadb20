"""Read-only figures of the ledger for the metrics (`gateway.pipeline.metrics`).

Kept beside `ledger.py`, over its connection, so that module stays about keeping the
record. The events are read from an id on (the trail only grows), so a process reads
each event once. On a ledger of 1,000,000 packages and events (bench/ledger_scale.py's
fill), the first scrape took 6.6 s and each later one 0.53-0.60 s; reading every
event at each scrape had taken 8-9 s, and 13-19 s beside a running benchmark.
"""

from __future__ import annotations

from gateway.adapters.ledger import Ledger
from gateway.core.lifecycle import BACKLOG

#: Seconds between two julianday() values.
_DAY = 86400.0


def oldest_pending(ledger: Ledger) -> dict[str, str]:
    """Per partner, when its oldest outbound package not yet delivered was taken in."""
    marks = ", ".join("?" * len(BACKLOG))
    rows = ledger.db.execute(
        f"SELECT coalesce(partner, ''), min(created_at) FROM packages "  # noqa: S608 - placeholders only
        f"WHERE direction = 'out' AND state IN ({marks}) GROUP BY 1",
        sorted(BACKLOG),
    )
    return {str(p): str(at) for p, at in rows}


def events_since(
    ledger: Ledger, after: int, limit: int = 100_000
) -> list[tuple[int, str, str, str, float]]:
    """Events after id `after`, oldest first, at most `limit`: (id, action, partner, state,
    seconds since its package was taken in, for a delivery or a receipt; else 0)."""
    rows = ledger.db.execute(
        "SELECT e.id, e.action, coalesce(e.partner, ''), coalesce(e.state, ''), "
        "coalesce((julianday(e.at) - julianday(p.created_at)) * ?, 0) FROM events e "
        "LEFT JOIN packages p ON e.action IN ('deliver', 'receipt') AND p.package_id = e.package_id "
        "WHERE e.id > ? ORDER BY e.id LIMIT ?",
        [_DAY, after, limit],
    )
    return [(int(i), str(a), str(p), str(s), max(0.0, float(d))) for i, a, p, s, d in rows]


def last_event(ledger: Ledger, action: str) -> str | None:
    """When the newest event of `action` was recorded, if any."""
    row = ledger.db.execute(  # from the newest back: checkpoints are never far from it
        "SELECT at FROM events WHERE action = ? ORDER BY id DESC LIMIT 1", [action]
    ).fetchone()
    return str(row[0]) if row else None
