"""The gateway's obligations, applied: legal basis and routing at intake, clocks after.

- `admit`: before a package is recorded `received`, the regime it travels under (the
  partner's policy) and the routing check (the subject's nationalities); refused with
  `NoLegalBasis` or `Misrouted`, which `send` shows and intake quarantines with;
- `accepted`: an inbound request starts our answer clock;
- `refresh`: an outbound request, once delivered, starts the partner's answer clock;
- `standings`, `warn`: where each duty stands, and the log's warning before and at expiry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from gateway.adapters.calendar import working_days
from gateway.adapters.ledger import Ledger
from gateway.adapters.obligations import Duty, Obligations, Terms
from gateway.core.duties import (
    Declared,
    duty_for,
    end_of,
    legal_basis,
    misrouted,
    standing,
)
from gateway.core.envelope import Manifest
from gateway.core.errors import SettingsInvalid
from gateway.core.model import Package, utc
from gateway.core.regimes import Regime, add_months
from gateway.core.settings import Settings

log = logging.getLogger("gateway")
DAY = 86400


@dataclasses.dataclass(frozen=True)
class Admitted:
    """What intake records of a package it admits: its regime and its terms."""

    regime: Regime
    terms: Terms


@dataclasses.dataclass(frozen=True)
class Standing:
    """One duty and where it stands now."""

    duty: Duty
    state: str  # open, due-soon, late, met, met-late (core/duties.py standing)


class Duties:
    """Partner policy, routing and deadlines over one ledger and the regimes in force."""

    def __init__(self, ledger: Ledger, regimes: Callable[[], Mapping[str, Regime]],
                 settings: Settings) -> None:  # fmt: skip
        self.ledger = ledger
        self.obligations = Obligations(ledger)
        self._regimes = regimes
        self.settings = settings

    @functools.cached_property
    def regimes(self) -> Mapping[str, Regime]:
        """The regimes in force (read on first use, and again by `reload`)."""
        return self._regimes()

    def reload(self) -> None:
        """Read the regimes files again (the daemon's SIGHUP); one that does not load
        raises `RegimesInvalid` and leaves the regimes in force as they were."""
        self.__dict__["regimes"] = self._regimes()

    def load_calendars(self) -> None:
        """Load the working-day calendars of the regimes in force and the default, and this
        year's holidays in each, now: the first load took 0.13 s of CPU here (the library
        imports every country), which a daemon pays at start rather than on the first
        package it takes in. An unknown calendar is reported by the packages that need it."""
        names = {regime.calendar for regime in self.regimes.values() if regime.calendar}
        for name in names | {self.settings.duties_calendar}:
            with contextlib.suppress(SettingsInvalid):
                working_days(name)(self._today())

    def is_working(self, regime: Regime) -> Callable[[date], bool]:
        """The working-day calendar of a regime's answer clock."""
        return working_days(regime.calendar or self.settings.duties_calendar)

    def _today(self) -> date:
        return datetime.fromtimestamp(self.ledger.clock.now(), UTC).date()

    # -- intake ---------------------------------------------------------------------------

    def admit(self, partner: str, kind: str, declared: Declared, package_id: str) -> Admitted:
        """The regime and terms of an outbound package, or `NoLegalBasis`/`Misrouted`."""
        allowed = self.obligations.allowed(partner, kind)
        regime = legal_basis(partner, kind, declared.legal_basis, allowed, self.regimes)
        serves = [partner[:2], *self.obligations.channels(partner)]
        if problem := misrouted(partner, serves, declared.nationalities):
            raise problem
        recorded = declared.recorded_on or self._today().isoformat()
        duty = due_at = None
        if kind == "request":  # the partner's clock starts on delivery (`refresh`)
            duty = "await" if regime.answer_within_working_days else None
        elif found := duty_for(
            regime, kind, "out", date.fromisoformat(recorded), self.is_working(regime)
        ):
            duty, due_at = found[0], end_of(found[1])
        terms = Terms(package_id, duty, due_at, recorded if duty == "notify" else declared.recorded_on,
                      declared.nationalities, declared.supersedes)  # fmt: skip
        return Admitted(regime, terms)

    def restrictions(self, package: Package) -> tuple[str, ...] | None:
        """The use restrictions the manifest carries: those of the package's regime."""
        regime = self.regimes.get(package.legal_basis or "")
        return regime.use_restrictions or None if regime else None

    def supersedes(self, package_id: str) -> str | None:
        """The package this one amends, if it says so."""
        terms = self.obligations.terms(package_id)
        return terms.supersedes if terms else None

    # -- inbound --------------------------------------------------------------------------

    def accepted(self, package_id: str, partner: str, manifest: Manifest) -> None:
        """Record an accepted inbound package's terms; a request starts our answer clock.

        Its regime is the one its manifest names, if known here, else the first this
        partner is registered for requests under.
        """
        regime = self.regimes.get(manifest.legal_basis or "")
        if regime is None and (allowed := self.obligations.allowed(partner, manifest.kind)):
            regime = self.regimes.get(allowed[0])
        duty = due_at = None
        if regime is not None and manifest.kind == "request":
            received = datetime.fromtimestamp(self.ledger.clock.now(), UTC).date()
            if found := duty_for(regime, "request", "in", received, self.is_working(regime)):
                duty, due_at = found[0], end_of(found[1])
        if duty or manifest.supersedes:
            self.obligations.add(Terms(package_id, duty, due_at, supersedes=manifest.supersedes))

    # -- clocks ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Start the partner's answer clock of each outbound request delivered since."""
        for pid, delivered_at in self.obligations.unstarted():
            package = self.ledger.package(pid)
            regime = self.regimes.get(package.legal_basis or "")
            if regime is None:
                continue
            delivered = date.fromisoformat(delivered_at[:10])
            if found := duty_for(regime, "request", "out", delivered, self.is_working(regime)):
                self.obligations.set_due(pid, end_of(found[1]))

    def standings(self, package_id: str | None = None) -> list[Standing]:
        """The open duties and where each stands now (those met since are kept as met and
        left out); or the one duty of `package_id`, met or not."""
        self.refresh()
        now = self.ledger.clock.now()
        soon = utc(now + self.settings.duties_warn_days * DAY)
        found = [Standing(d, standing(d.due_at, d.met_at, utc(now), soon))
                 for d in self.obligations.duties(package_id)]  # fmt: skip
        if package_id is None:
            if met := [s.duty for s in found if s.duty.met_at is not None]:
                self.obligations.close(met)
            found = [s for s in found if s.duty.met_at is None]
        return found

    def batches(self) -> list[dict[str, Any]]:
        """Batch duties (e.g. at least yearly) per partner: last sent and next due."""
        found = []
        for partner in self.ledger.partners():
            seen = set()
            for kind, rid, added_at in self.obligations.regimes_of(partner.id):
                regime = self.regimes.get(rid)
                if regime is None or not regime.batch_every_months or rid in seen:
                    continue
                seen.add(rid)
                row = self.ledger.db.execute(
                    "SELECT MAX(delivered_at) FROM packages WHERE partner = ? AND legal_basis = ? "
                    "AND direction = 'out' AND kind = ?", [partner.id, rid, kind]).fetchone()  # fmt: skip
                last = row[0] if row else None
                start = date.fromisoformat((last or added_at)[:10])
                due = end_of(add_months(start, regime.batch_every_months))
                found.append({"partner": partner.id, "regime": rid, "kind": kind,
                              "last_sent": last, "next_due": due})  # fmt: skip
        return found

    def warn(self) -> list[str]:
        """Log each duty once when it comes within duties.warn_days of its end, and once when late."""
        said = []
        for s in self.standings():
            level = {"due-soon": "soon", "late": "late"}.get(s.state)
            if level is None or s.duty.warned == level:
                continue
            d = s.duty
            what = {"notify": "notification to", "answer": "answer to a request from",
                    "await": "answer expected from"}[d.duty]  # fmt: skip
            line = (f"{d.package_id}: {what} {d.partner} under {d.regime} "
                    + ("is late: it was due by " if level == "late" else "is due by ") + str(d.due_at))  # fmt: skip
            log.warning("%s", line)
            self.obligations.warned(d.package_id, level)
            said.append(line)
        return said
