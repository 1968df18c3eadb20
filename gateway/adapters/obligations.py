"""The ledger's tables of obligations: each partner's policy, and each package's duty.

Kept apart from `ledger.py` (the tables are made by migration m003, in `schema.py`) so that the
ledger's own module stays about packages and their audit trail. Every write joins the
ledger's write transaction and is audited there.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any, Final

from gateway.adapters.ledger import Ledger
from gateway.core.model import utc


@dataclasses.dataclass(frozen=True)
class Terms:
    """What the ledger keeps of one package's declarations and duty."""

    package_id: str
    duty: str | None = None  # notify, answer or await (core/duties.py); None: no clock
    due_at: str | None = None
    recorded_on: str | None = None
    nationalities: tuple[str, ...] = ()
    supersedes: str | None = None
    warned: str | None = None  # "soon" or "late" once the log has said so
    met_at: str | None = None  # when what met the duty happened (kept once seen)
    met_by: str | None = None

    def row(self) -> dict[str, Any]:
        """The row as stored."""
        return {field.name: getattr(self, field.name) for field in _TERMS} | {
            "nationalities": json.dumps(list(self.nationalities))
        }

    @staticmethod
    def from_row(row: dict[str, Any]) -> Terms:
        """Build from an `obligations` row."""
        return Terms(**{**row, "nationalities": tuple(json.loads(row["nationalities"] or "[]"))})


_TERMS: Final = dataclasses.fields(Terms)


@dataclasses.dataclass(frozen=True)
class Duty:
    """One open or met duty, with what its package is and what met it."""

    package_id: str
    duty: str
    due_at: str | None
    partner: str
    kind: str
    regime: str | None
    warned: str | None
    met_at: str | None
    met_by: str | None


#: When each duty was met: notify by delivering the package itself; answer by delivering
#: our response naming it; await by accepting the partner's response naming it. Worked out
#: for open duties only, and kept once seen (`close`): worked out again on each look,
#: 100,000 met duties took 4.1 s; kept, a look takes 0.011 s (python -m bench.duties_scale).
#: Every join here is a CROSS JOIN, which SQLite reads as "obligations first": left to
#: its planner, `status` on a ledger of 1,000,000 packages and no duty walked every
#: package, 1.19 s of its 1.31 s (the benchmark's scenario 6).
_DUTIES = """
SELECT o.package_id, o.duty, o.due_at, p.partner, p.kind, p.legal_basis AS regime, o.warned,
  COALESCE(o.met_at, CASE o.duty WHEN 'notify' THEN p.delivered_at
    WHEN 'answer' THEN (SELECT MIN(r.delivered_at) FROM packages r
                        WHERE r.in_reply_to = o.package_id AND r.direction = 'out')
    ELSE (SELECT MIN(r.created_at) FROM packages r WHERE r.in_reply_to = o.package_id
          AND r.direction = 'in' AND r.state = 'accepted') END) AS met_at,
  COALESCE(o.met_by, (SELECT MIN(r.package_id) FROM packages r WHERE r.in_reply_to = o.package_id
   AND r.direction = CASE o.duty WHEN 'answer' THEN 'out' ELSE 'in' END)) AS met_by
FROM obligations o CROSS JOIN packages p ON p.package_id = o.package_id
WHERE o.duty IS NOT NULL AND p.state NOT IN ('cancelled', 'rejected')
"""


class Obligations:
    """Partner policy and package duties, in the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # -- partner policy -------------------------------------------------------------------

    def regimes_of(self, partner: str) -> list[tuple[str, str, str]]:
        """(kind, regime, added_at) the partner may receive, first choice first for each kind."""
        rows = self.ledger.db.execute(
            "SELECT kind, regime, added_at FROM partner_regimes WHERE partner = ? ORDER BY kind, position",
            [partner],
        )
        return [(k, r, a) for k, r, a in rows]

    def allowed(self, partner: str, kind: str) -> list[str]:
        """The regimes `partner` may receive `kind` under, first choice first."""
        return [r for k, r, _ in self.regimes_of(partner) if k == kind]

    def channels(self, partner: str) -> list[str]:
        """The countries, besides its own, a partner is registered as a channel for."""
        rows = self.ledger.db.execute(
            "SELECT country FROM partner_countries WHERE partner = ? ORDER BY country", [partner]
        )
        return [row[0] for row in rows]

    def set_policy(self, partner: str, rules: Sequence[tuple[str, str]] | None,
                   channels: Sequence[str] | None, reason: str) -> None:  # fmt: skip
        """Replace a partner's regimes (if `rules`) and channels (if `channels`); audited."""
        db, now = self.ledger.db, utc(self.ledger.clock.now())
        with self.ledger.transaction():
            self.ledger.partner(partner)
            if rules is not None:
                db.execute("DELETE FROM partner_regimes WHERE partner = ?", [partner])
                db.table("partner_regimes").insert_all(
                    {"partner": partner, "kind": k, "regime": r, "position": n, "added_at": now}
                    for n, (k, r) in enumerate(rules)
                )
            if channels is not None:
                db.execute("DELETE FROM partner_countries WHERE partner = ?", [partner])
                db.table("partner_countries").insert_all(
                    {"partner": partner, "country": c} for c in channels
                )
            detail: dict[str, Any] = {"reason": reason}
            if rules is not None:
                detail["regimes"] = [f"{k}={r}" for k, r in rules]
            if channels is not None:
                detail["channel_for"] = list(channels)
            self.ledger.record("partner.policy", partner=partner, detail=detail)

    # -- package duties -------------------------------------------------------------------

    def add(self, terms: Terms) -> None:
        """Record a package's terms (inside the transaction that records the package)."""
        self.ledger.put("obligations", terms.row())

    def terms(self, package_id: str) -> Terms | None:
        """The terms recorded for a package, if any."""
        rows = self.ledger.rows("SELECT * FROM obligations WHERE package_id = ?", [package_id])
        return Terms.from_row(rows[0]) if rows else None

    def amending(self, package_id: str) -> list[str]:
        """The packages that say they supersede `package_id`, oldest first."""
        rows = self.ledger.db.execute(
            "SELECT package_id FROM obligations WHERE supersedes = ? ORDER BY package_id",
            [package_id],
        )
        return [row[0] for row in rows]

    def duties(self, package_id: str | None = None) -> Iterator[Duty]:
        """The duties not yet seen met (or the one of `package_id`, met or not), with what
        met them, if anything has since."""
        where, args = (
            ("AND o.package_id = ?", [package_id]) if package_id else ("AND o.met_at IS NULL", [])
        )
        for row in self.ledger.rows(_DUTIES + where + " ORDER BY o.due_at", args):
            yield Duty(**row)

    def close(self, met: Sequence[Duty]) -> None:
        """Keep when, and by what, these duties were met."""
        with self.ledger.transaction():
            for duty in met:
                self.ledger.db.execute(
                    "UPDATE obligations SET met_at = ?, met_by = ? WHERE package_id = ?",
                    [duty.met_at, duty.met_by, duty.package_id],
                )

    def met_in_time(self) -> dict[str, int]:
        """Per partner, how many duties were met within their period."""
        rows = self.ledger.db.execute(
            "SELECT p.partner, COUNT(*) FROM obligations o CROSS JOIN packages p ON p.package_id = "
            "o.package_id WHERE o.met_at IS NOT NULL AND o.met_at <= o.due_at GROUP BY p.partner"
        )
        return {partner: n for partner, n in rows}

    def unstarted(self) -> list[tuple[str, str]]:
        """(package id, delivered_at) of outbound requests delivered whose await clock has no due date."""
        rows = self.ledger.db.execute(
            "SELECT o.package_id, p.delivered_at FROM obligations o CROSS JOIN packages p "
            "ON p.package_id = o.package_id WHERE o.duty = 'await' AND o.due_at IS NULL "
            "AND p.delivered_at IS NOT NULL"
        )
        return [(pid, at) for pid, at in rows]

    def set_due(self, package_id: str, due_at: str) -> None:
        """Start a clock that waited for delivery."""
        with self.ledger.transaction():
            self.ledger.db.execute(
                "UPDATE obligations SET due_at = ? WHERE package_id = ?", [due_at, package_id]
            )

    def warned(self, package_id: str, level: str) -> None:
        """Remember that the log warned of this duty at `level`, so it says so once."""
        with self.ledger.transaction():
            self.ledger.db.execute(
                "UPDATE obligations SET warned = ? WHERE package_id = ?", [level, package_id]
            )
