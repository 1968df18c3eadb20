"""`gateway report`: what the gateway exchanged over a period, from its ledger."""

from __future__ import annotations

import csv
import io
from typing import Any

from gateway.adapters import reads
from gateway.app.gateway import Gateway
from gateway.core import report
from gateway.core.model import utc


def build(gw: Gateway, start: str, end: str, by: str | None) -> dict[str, Any]:
    """The report of the days `start` to `end` (inclusive, UTC), grouped `by`."""
    window, names = report.period(start, end), report.groups(by)
    return {"from": start, "to": end, "by": list(names), "gateway": gw.settings.gateway_id,
            "rows": report.tally(reads.entries(gw.ledger, window, utc(gw.clock.now())), names)}  # fmt: skip


def columns(doc: dict[str, Any]) -> list[str]:
    """The report's columns, in order: the groups, the counts, the times."""
    return [*doc["by"], *report.COUNTS, *report.TIMES]


def as_csv(doc: dict[str, Any]) -> str:
    """The rows as CSV with a header line; an empty cell where no time could be measured."""
    out = io.StringIO()
    writer = csv.DictWriter(out, columns(doc), lineterminator="\n")
    writer.writeheader()
    writer.writerows(doc["rows"])
    return out.getvalue()


def as_text(doc: dict[str, Any]) -> str:
    """The rows as a table for a terminal."""
    names = columns(doc)
    heads = [n.replace("_seconds_to_receipt", " s to receipt").replace("_", " ") for n in names]
    cells = [[("-" if r[n] is None else str(r[n])) for n in names] for r in doc["rows"]]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    lines = [f"{doc['gateway']}: packages taken in from {doc['from']} to {doc['to']} (UTC)"]
    for row in [heads, *cells]:
        lines.append("  ".join(c.ljust(w) if i < len(doc["by"]) else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))  # fmt: skip
    return "\n".join(lines)
