"""Reads of the ledger that only reports and records make, each one SQL query.

Kept apart from `ledger.py`, whose methods the daemon's work uses. Over a ledger of a
million packages across two years (bench/ledger_scale.py), building report rows from
`Package` and `Event` values took 67 s; this query takes 2.3 - 4.1 s, and a day of it
0.2 s through the index of `created_at` (docs/performance.md, section 7).
"""

from __future__ import annotations

from typing import Final

from gateway.adapters.ledger import Ledger
from gateway.adapters.obligations import _DUTIES
from gateway.core.duties import standing
from gateway.core.lifecycle import RECEIPTED
from gateway.core.report import Entry

_RECEIPTED: Final = sorted(RECEIPTED)
# The receipt's time is that of the event that moved the package to its verdict; found
# through the index of events by package, for packages with a verdict only.
_ENTRIES: Final = (
    "SELECT p.package_id, p.direction, p.state, p.partner, p.kind, p.created_at, p.delivered_at, "
    "CASE WHEN p.state IN (?, ?) THEN (SELECT max(e.at) FROM events e WHERE e.package_id = "
    "p.package_id AND e.action = 'receipt' AND e.state = p.state) END, p.legal_basis "
    "FROM packages p WHERE p.created_at >= ? AND p.created_at < ?"
)
# The duties of the same packages, met or not, as `Obligations` works them out.
_WINDOW_DUTIES: Final = (
    f"SELECT package_id, duty, due_at, met_at FROM ({_DUTIES} "  # noqa: S608 - constant text
    "AND p.created_at >= ? AND p.created_at < ?)"
)


def entries(ledger: Ledger, created: tuple[str, str], now: str) -> list[Entry]:
    """The packages taken in from `created[0]` to before `created[1]`, as report rows,
    with where their duty stands at `now`."""
    duties = {
        pid: (duty, standing(due_at, met_at, now, now))
        for pid, duty, due_at, met_at in ledger.db.execute(_WINDOW_DUTIES, list(created))
    }
    rows = ledger.db.execute(_ENTRIES, [*_RECEIPTED, *created])
    return [Entry(*row, *duties.get(row[0], (None, None))) for row in rows]
