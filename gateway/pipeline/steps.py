"""The step runner: every unit of the daemon's work, one method each.

- `take(found)`: spool entries taken in together, or quarantined (`intake`);
- `seal(package)`: a received package sealed; a large one delivered beside gpg
  (`sealing`, `deliver`);
- `turn(partner, packages, poll)`: one turn with a partner over one link of its
  transport: what it read whole is recorded, due packages are delivered, and with
  `poll` what it sent is collected and what the gateway owes it is answered
  (`deliver`, `collect`, `accept`, `acknowledge`).

Each step reads what it needs from the ledger and records what it did, so a step cut
short by a crash is simply done again. The checks that stop traffic (a disabled
partner, a key that cannot be used) are made here, once, before any transport is
touched; nothing here asks which transport a partner has. What is due, and when, is
`schedule.Scheduler`'s to say.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.spool import Entry, entries
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError, KeyProblem, PartnerDisabled, Transient
from gateway.core.lifecycle import State
from gateway.core.model import Package, Partner, utc
from gateway.core.names import new_package_id
from gateway.core.settings import Settings
from gateway.pipeline.accept import Accept
from gateway.pipeline.acknowledge import Acknowledge
from gateway.pipeline.collect import Collector
from gateway.pipeline.deliver import Delivery
from gateway.pipeline.duties import Duties
from gateway.pipeline.intake import Intake
from gateway.pipeline.sealing import Sealer
from gateway.pipeline.setback import Setback
from gateway.transports.base import Transport

log = logging.getLogger("gateway")


def closed(partner: Partner) -> PartnerDisabled | None:
    """Why no traffic may go to or come from `partner` now, or None."""
    if partner.enabled:
        return None
    return PartnerDisabled(
        f"partner {partner.id} is disabled: `gateway partner enable {partner.id}` when ready, "
        "then `gateway retry` its held packages"
    )


class Steps:
    """The daemon's units of work, over one home."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, settings: Settings,
                 clock: Clock, transport: Callable[[Partner], Transport], duties: Duties) -> None:  # fmt: skip
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.settings = settings
        self.clock = clock
        self.transport = transport
        self.duties = duties
        self.intake = Intake(home, ledger, settings, duties)
        self.sealer = Sealer(home, ledger, keyring, settings.gateway_id, duties)
        self.setback = Setback(ledger, settings)
        self.delivery = Delivery(home, ledger, self.setback)
        self.accept = Accept(home, ledger, keyring, settings, duties)
        self.collector = Collector(
            home,
            ledger,
            self.accept,
            Acknowledge(home, ledger, keyring, settings.gateway_id,
                        settings.keys_overlap_days * 86400),
            settings,
        )  # fmt: skip

    def use(self, settings: Settings) -> None:
        """Put reloaded settings in force for every step from now on (the ones that cannot
        change while running, `settings.RESTART`, are the same as before)."""
        self.settings = settings
        for part in (self.intake, self.setback, self.accept, self.collector, self.duties):
            part.settings = settings

    # -- taking in ----------------------------------------------------------------------

    def recover(self) -> None:
        """Finish what a crash interrupted (each step's module says how)."""
        self.intake.recover()
        self.sealer.erase_leftovers()
        self.accept.recover()

    def take_in(self) -> int:
        """Take in every settled entry of the outbound spool; return how many are unsettled."""
        now = self.clock.now()
        found = list(entries(self.home.outbound))
        settled = [entry for entry in found
                   if not entry.regular or entry.settled(now, self.settings.daemon_settle_seconds)]  # fmt: skip
        self.take(settled)
        return len(found) - len(settled)

    def take(self, found: Iterable[Entry]) -> list[Package]:
        """Take spool entries in, recorded in one commit, or quarantine each that may not
        come in; an entry the host cannot take now stays where it is."""
        moved = []
        for entry in found:
            try:
                if pid := self._take(entry):
                    moved.append(pid)
            except FileNotFoundError:
                continue  # its producer took it back
            except OSError as err:  # disk full, say: the file stays where it is, for the next pass
                log.warning("intake paused: cannot take %s in (%s); it stays where it is",
                            entry.path.name, err.strerror or err)  # fmt: skip
        try:
            return self.intake.record(moved)
        except OSError as err:
            log.warning("intake paused: %d files moved in, not yet recorded (%s); the next scan "
                        "records them", len(moved), err.strerror or err)  # fmt: skip
            return []

    def _take(self, entry: Entry) -> str | None:
        if entry.partner is None or entry.kind is None:
            reason = "found outside spool/outbound/<PARTNER>/<kind>/: drop files in a kind folder"
        elif not entry.regular:
            reason = "not a regular file (a link, folder, FIFO or device is never taken)"
        else:
            return self.intake.move_in(entry.path, entry.partner, entry.kind)
        pid = new_package_id(self.settings.gateway_id, self.clock.now())
        self.intake.quarantine(entry.path, pid, entry.partner, entry.kind, reason)
        return None

    # -- sealing --------------------------------------------------------------------------

    def seal(self, package: Package) -> None:
        """Seal one package, or set it back; a large one is delivered while it is sealed
        (its transport lends a part on the partner's side, the sealer writes into it)."""
        try:
            partner = self.ledger.partner(str(package.partner))
            if problem := closed(partner):
                raise problem
            if (package.payload_size or 0) < self.delivery.stream_from:
                self.sealer.seal(package, partner)
                return
            with self.delivery.beside(self.transport(partner), package) as beside:
                sealed = self.sealer.seal(package, partner, tee=beside.part if beside else None)
                if beside is not None:
                    beside.place(sealed)
        except GatewayError as err:
            self.setback.one(package, err)
        except Exception as err:  # a bug met by this package alone: it waits, and says why
            log.exception("%s: unexpected error while sealing", package.package_id)
            self.setback.one(package, Transient(
                f"unexpected {type(err).__name__} while sealing; it is tried again later: "
                "if it keeps failing, report it with the log"))  # fmt: skip

    # -- a partner's turn -----------------------------------------------------------------

    def turn(self, partner: Partner, packages: list[Package], poll: bool) -> None:
        """One turn with a partner: deliver what is due; collect and answer if `poll`."""
        transport = self.transport(partner)
        self._record_reads(partner, transport)
        if problem := closed(partner):
            self.setback.all(packages, problem)
            return
        packages = self.sendable(packages)
        if not (packages or poll):
            return
        delivered = False  # delivery sets back its own failures; before it, nothing was tried
        try:
            with transport.link() as link:
                self.delivery.deliver(transport, link, packages)
                delivered = True
                if poll:
                    self.collector.collect(partner, link)
                    self.collector.answer(partner, link)
        except GatewayError as err:
            if not delivered:
                self.setback.all(packages, err)
            if transport.remote:
                self.contact(partner.id, err)
            elif poll:
                log.error("poll of %s: %s", partner.id, err)
        else:
            if transport.remote:
                self.contact(partner.id, None)

    def contact(self, partner_id: str, err: GatewayError | None) -> None:
        """Record a contact with a partner in its health record, and log it going down
        (then at a falling rate while it stays down: `Contact.worth_warning`) and coming back."""
        before, after = self.ledger.contact(partner_id, None if err is None else str(err))
        if err is None and before.down_since is not None:
            log.info("partner %s is reachable again, after %d failed contacts since %s",
                     partner_id, before.failures, utc(before.down_since), extra={"partner": partner_id})  # fmt: skip
        elif err is not None and after.worth_warning():
            log.warning("partner %s cannot be reached (%d failed contacts since %s): %s", partner_id,
                        after.failures, utc(after.down_since or 0), err, extra={"partner": partner_id, "error": str(err)})  # fmt: skip

    def record_reads(self) -> None:
        """Record every package a partner has read whole since its last turn: `delivered`."""
        for partner in self.ledger.partners():
            self._record_reads(partner, self.transport(partner))

    def _record_reads(self, partner: Partner, transport: Transport) -> None:
        for pid in transport.read_whole():
            package = self.ledger.find(pid)
            if package and package.partner == partner.id and package.state is State.PUBLISHED:
                self.ledger.transition(pid, State.DELIVERED, "deliver", {"how": "read whole by the partner"},
                                       delivered_at=utc(self.clock.now()))  # fmt: skip

    def overdue(self) -> int:
        """Record (and so log, as a warning) each delivered package whose receipt has just
        become overdue, once: a `receipt.overdue` event. Returns how many were new."""
        cutoff = utc(self.clock.now() - self.settings.receipts_overdue_after_seconds)
        new = 0
        for package in self.ledger.packages(state=State.DELIVERED, delivered_before=cutoff):
            if not any(
                e.action == "receipt.overdue" for e in self.ledger.events(package.package_id)
            ):
                self.ledger.record("receipt.overdue", package_id=package.package_id, partner=package.partner,
                                   detail={"error": f"no receipt since its delivery at {package.delivered_at}: "
                                           "ask the partner whether it arrived"})  # fmt: skip
                new += 1
        return new

    def sendable(self, packages: list[Package]) -> list[Package]:
        """The packages whose recipient key is still good; the others are held, never sent."""
        problems: dict[str, str | None] = {}
        for fpr in {str(p.recipient_key) for p in packages}:
            try:
                problems[fpr] = self.keyring.key(fpr).problem()
            except KeyProblem as err:
                problems[fpr] = str(err)
        good = []
        for package in packages:
            if problem := problems[str(package.recipient_key)]:
                self.setback.one(package, KeyProblem(
                    f"sealed for {package.recipient_key}, but {problem}: once the partner's key is "
                    "renewed, `gateway retry`; if it was replaced, cancel and send the original again"))  # fmt: skip
            else:
                good.append(package)
        return good
