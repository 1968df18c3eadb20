"""Exchange statistics over a period (`gateway report`): pure counting over ledger values.

A package belongs to the period when the gateway took it in (outbound: intake; inbound:
fetched) on a day from `--from` to `--to`, both included, in UTC. Counts are by the
package's state now. Time to receipt is from delivery (`delivered_at`) to the partner's
receipt, accepted or rejected, as recorded; its 95th percentile is the nearest-rank one.

To add a column, add a predicate to `COUNTS` (or a statistic in `tally`); to add a way
to group, add a key to `GROUPS`. Columns that come with duties (the regime as a group,
notifications and requests within their period, late now) belong here, from the
package fields that record them.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta
from typing import Any, Final

from gateway.core.errors import UsageError
from gateway.core.lifecycle import State
from gateway.core.model import Package

S = State
_WITH_RECEIPT: Final = frozenset({S.ACKNOWLEDGED, S.REFUSED})

#: column -> which packages it counts. Outbound first, then inbound.
COUNTS: Final[dict[str, Callable[[Package], bool]]] = {
    "sent": lambda p: p.direction == "out" and p.delivered_at is not None,
    "acknowledged": lambda p: p.direction == "out" and p.state is S.ACKNOWLEDGED,
    "refused": lambda p: p.direction == "out" and p.state is S.REFUSED,
    "failed": lambda p: p.direction == "out" and p.state is S.FAILED,
    "cancelled": lambda p: p.direction == "out" and p.state is S.CANCELLED,
    "received": lambda p: p.direction == "in",
    "accepted": lambda p: p.direction == "in" and p.state is S.ACCEPTED,
    "rejected": lambda p: p.direction == "in" and p.state is S.REJECTED,
}
#: The statistics of time to receipt, in seconds (None when no package had a receipt).
TIMES: Final = ("median_seconds_to_receipt", "p95_seconds_to_receipt")
#: --by name -> the group a package falls in.
GROUPS: Final[dict[str, Callable[[Package], str]]] = {
    "partner": lambda p: p.partner or "(unknown)",
    "kind": lambda p: p.kind or "(unknown)",
    "month": lambda p: p.created_at[:7],
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


def _row(
    key: dict[str, str], packages: list[Package], receipts: Mapping[str, str]
) -> dict[str, Any]:
    row: dict[str, Any] = {**key, **{c: sum(map(f, packages)) for c, f in COUNTS.items()}}
    times = sorted(
        round(_seconds(p.delivered_at, receipts[p.package_id]), 3)
        for p in packages
        if p.direction == "out" and p.state in _WITH_RECEIPT
        and p.delivered_at and p.package_id in receipts
    )  # fmt: skip
    row[TIMES[0]] = round(statistics.median(times), 3) if times else None
    row[TIMES[1]] = nearest_rank(times, 95) if times else None
    return row


def tally(
    packages: Iterable[Package], receipts: Mapping[str, str], by: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per group (sorted), then the row of totals; `receipts`: package id -> receipt time."""
    chosen = list(packages)
    grouped: dict[tuple[str, ...], list[Package]] = {}
    for p in chosen:
        grouped.setdefault(tuple(GROUPS[g](p) for g in by), []).append(p)
    rows = [
        _row(dict(zip(by, key, strict=True)), grouped[key], receipts) for key in sorted(grouped)
    ]
    return (
        [*rows, _row(dict.fromkeys(by, ALL), chosen, receipts)]
        if by
        else [_row({}, chosen, receipts)]
    )
