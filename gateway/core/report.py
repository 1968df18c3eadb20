"""Exchange statistics over a period (`gateway report`): pure counting over ledger values.

A package belongs to the period when the gateway took it in (outbound: intake; inbound:
fetched) on a day from `--from` to `--to`, both included, in UTC. Counts are by the
package's state now. Time to receipt is from delivery (`delivered_at`) to the partner's
receipt, accepted or rejected, as recorded; its 95th percentile is the nearest-rank one.

Duties (`core/duties.py`): a notification counts as notified in time, and a request we
received as answered in time, when its duty was met by its last day; `late_now` counts
duties open past their last day when the report runs. `--by regime` groups by the
package's legal basis. To add a column, add a predicate to `COUNTS` (or a statistic in
`tally`); to add a way to group, add a key to `GROUPS`.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from typing import Any, Final, NamedTuple

from gateway.core.duties import ANSWER, NOTIFY
from gateway.core.errors import UsageError
from gateway.core.lifecycle import RECEIPTED, State

S = State


class Entry(NamedTuple):
    """What a report needs of one package: a plain row, not the whole package (a report
    over a million packages reads a million of these)."""

    package_id: str
    direction: str
    state: str
    partner: str | None
    kind: str | None
    created_at: str
    delivered_at: str | None
    receipt_at: str | None  # when the partner's receipt was recorded, if one came
    regime: str | None = None  # the legal basis it travels under
    duty: str | None = None  # the duty it started (core/duties.py), if any
    standing: str | None = None  # where that duty stands now (`duties.standing`)


#: column -> which packages it counts. Outbound first, then inbound.
COUNTS: Final[dict[str, Callable[[Entry], bool]]] = {
    "sent": lambda p: p.direction == "out" and p.delivered_at is not None,
    "acknowledged": lambda p: p.direction == "out" and p.state == S.ACKNOWLEDGED,
    "refused": lambda p: p.direction == "out" and p.state == S.REFUSED,
    "failed": lambda p: p.direction == "out" and p.state == S.FAILED,
    "cancelled": lambda p: p.direction == "out" and p.state == S.CANCELLED,
    "received": lambda p: p.direction == "in",
    "accepted": lambda p: p.direction == "in" and p.state == S.ACCEPTED,
    "rejected": lambda p: p.direction == "in" and p.state == S.REJECTED,
    "notified_in_time": lambda p: p.duty == NOTIFY and p.standing == "met",
    "answered_in_time": lambda p: p.duty == ANSWER and p.standing == "met",
    "late_now": lambda p: p.standing == "late",
}
#: The statistics of time to receipt, in seconds (None when no package had a receipt).
TIMES: Final = ("median_seconds_to_receipt", "p95_seconds_to_receipt")
#: --by name -> the group a package falls in.
GROUPS: Final[dict[str, Callable[[Entry], str]]] = {
    "partner": lambda p: p.partner or "(unknown)",
    "kind": lambda p: p.kind or "(unknown)",
    "month": lambda p: p.created_at[:7],
    "regime": lambda p: p.regime or "(none)",
}
#: What a group column holds on the row of totals.
ALL: Final = "all"


def period(start: str, end: str) -> tuple[str, str]:
    """The ledger times `[first, after)` of the days `start` to `end` (YYYY-MM-DD, inclusive)."""
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError:
        raise UsageError(
            f"--from {start} --to {end}: write each as a day, e.g. 2026-11-01"
        ) from None
    if last < first:
        raise UsageError(f"--to {end} is before --from {start}")
    return (
        f"{first.isoformat()}T00:00:00.000Z",
        f"{(last + timedelta(days=1)).isoformat()}T00:00:00.000Z",
    )


def groups(by: str | None) -> tuple[str, ...]:
    """The `--by` value as group names, checked."""
    names = tuple(n.strip() for n in (by or "").split(",") if n.strip())
    unknown = [n for n in names if n not in GROUPS]
    if unknown or len(set(names)) != len(names):
        raise UsageError(
            f"--by {by}: give each of {', '.join(GROUPS)} at most once, comma-separated"
        )
    return names


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def nearest_rank(values: list[float], percent: float) -> float:
    """The nearest-rank percentile of sorted `values` (not empty)."""
    return values[max(0, math.ceil(percent / 100 * len(values)) - 1)]


def _waited(p: Entry) -> float | None:
    """Seconds from delivery to the partner's receipt, for an outbound package that has one."""
    if p.direction != "out" or p.state not in RECEIPTED or not p.delivered_at or not p.receipt_at:
        return None
    return round(_seconds(p.delivered_at, p.receipt_at), 3)


class _Sums:
    """One row's counts and times, added to one package at a time."""

    def __init__(self) -> None:
        self.flags: Counter[tuple[bool, ...]] = Counter()  # few distinct: cheap to add to
        self.times: list[float] = []

    def add(self, flags: tuple[bool, ...], waited: float | None) -> None:
        self.flags[flags] += 1
        if waited is not None:
            self.times.append(waited)

    def row(self, key: dict[str, str]) -> dict[str, Any]:
        counts = [sum(n for flags, n in self.flags.items() if flags[i]) for i in range(len(COUNTS))]
        times = sorted(self.times)
        return {**key, **dict(zip(COUNTS, counts, strict=True)),
                TIMES[0]: round(statistics.median(times), 3) if times else None,
                TIMES[1]: nearest_rank(times, 95) if times else None}  # fmt: skip


def tally(packages: Iterable[Entry], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per group (sorted), then the row of totals; one row when not grouped."""
    total, grouped = _Sums(), dict[tuple[str, ...], _Sums]()
    tests = tuple(COUNTS.values())
    for p in packages:  # each package is judged once, for its group and the total
        flags, waited = tuple([test(p) for test in tests]), _waited(p)
        total.add(flags, waited)
        if by:
            key = tuple([GROUPS[g](p) for g in by])
            (grouped.get(key) or grouped.setdefault(key, _Sums())).add(flags, waited)
    if not by:
        return [total.row({})]
    rows = [grouped[key].row(dict(zip(by, key, strict=True))) for key in sorted(grouped)]
    return [*rows, total.row(dict.fromkeys(by, ALL))]
