"""The work loop: recover, take in, seal, deliver, poll. `run --once` is one pass of it.

Every step reads what is due from the ledger, so a pass after a crash simply carries on
where the last one stopped.
"""

from __future__ import annotations

import logging
import time

from gateway.adapters.spool import Entry, entries
from gateway.app.gateway import Gateway
from gateway.core.errors import GatewayError, KeyProblem, PartnerError
from gateway.core.lifecycle import State
from gateway.core.model import Package, Partner
from gateway.core.names import new_package_id
from gateway.pipeline.accept import Inbound
from gateway.pipeline.collect import Poller
from gateway.pipeline.intake import Intake
from gateway.pipeline.sealing import Sealer
from gateway.pipeline.setback import Retry
from gateway.transports.pull import Mailboxes
from gateway.transports.push import Deliverer

log = logging.getLogger("gateway")


class Runner:
    """One pass over all work that is due."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.intake = Intake(gw.home, gw.ledger, gw.settings)
        self.sealer = Sealer(gw.home, gw.ledger, gw.keyring, gw.settings.gateway_id)
        self.retry = Retry(gw.ledger, gw.settings)
        self.deliverer = Deliverer(gw.home, gw.ledger, gw.settings, self.retry)
        self.inbound = Inbound(gw.home, gw.ledger, gw.keyring, gw.settings)
        self.poller = Poller(gw.home, gw.ledger, self.inbound, self.deliverer)
        self.mailboxes = Mailboxes(gw.home, gw.ledger, self.inbound)

    def once(self) -> None:
        """Recover, take in everything waiting (letting fresh files settle), seal, deliver, poll."""
        self.recover()
        deadline = time.monotonic() + 10 * max(1, self.gw.settings.daemon_settle_seconds)
        while self.take_in() and time.monotonic() < deadline:
            time.sleep(0.2)
        try:
            self.seal_due()
            self.exchange_all()
        finally:
            self.deliverer.close_idle(0)

    def recover(self) -> None:
        """Finish what a crash interrupted."""
        self.intake.recover()
        self.sealer.erase_leftovers()

    def take_in(self) -> int:
        """Take in every settled entry of the outbound spool; return how many are unsettled."""
        unsettled = 0
        now = time.time()
        for entry in entries(self.gw.home.outbound):
            if entry.regular and not entry.settled(now, self.gw.settings.daemon_settle_seconds):
                unsettled += 1
                continue
            self.take(entry)
        return unsettled

    def take(self, entry: Entry) -> Package | None:
        """Take one spool entry in, or quarantine it; if the host cannot now, leave it be."""
        try:
            return self._take(entry)
        except FileNotFoundError:
            return None  # its producer took it back
        except OSError as err:  # disk full, say: the file stays where it is, for the next pass
            log.warning("intake paused: cannot take %s in (%s); it stays where it is", entry.path.name,
                        err.strerror or err)  # fmt: skip
            return None

    def _take(self, entry: Entry) -> Package:
        if entry.partner is None or entry.kind is None:
            reason = "found outside spool/outbound/<PARTNER>/<kind>/: drop files in a kind folder"
        elif not entry.regular:
            reason = "not a regular file (a link, folder, FIFO or device is never taken)"
        else:
            return self.intake.move_in(entry.path, entry.partner, entry.kind)
        pid = new_package_id(self.gw.settings.gateway_id)
        return self.intake.quarantine(entry.path, pid, entry.partner, entry.kind, reason)

    def seal_due(self) -> None:
        """Seal every received package that is due."""
        for package in self.gw.ledger.due(frozenset({State.RECEIVED}), time.time()):
            self.seal(package)

    def seal(self, package: Package) -> None:
        """Seal one package (a large one for a push partner while uploading it), or set it back."""
        try:
            if self.deliverer.streams(package):
                self.deliverer.stream(self.sealer, package)
            else:
                self.sealer.seal(package)
        except GatewayError as err:
            self.retry.setback(package, err)

    def partner_round(self, partner: Partner, packages: list[Package], poll: bool) -> None:
        """One turn with a partner: deliver or publish what is due; fetch and answer if `poll`.

        A push partner is visited over SFTP; a pull partner's mailbox is local.
        """
        packages = self.sendable(packages)
        if partner.transport == "push":
            if packages:
                self.deliverer.deliver(partner, packages)
            if poll:
                self.poller.poll(partner)
            return
        self.mailboxes.apply_events()
        if not partner.enabled:
            self.retry.setback_all(packages, PartnerError(f"partner {partner.id} is disabled"))
            return
        self.mailboxes.publish(partner, packages)
        self.mailboxes.take_uploads(partner)
        self.mailboxes.publish_receipts(partner)

    def sendable(self, packages: list[Package]) -> list[Package]:
        """The packages whose recipient key is still good; the others are held, never sent."""
        problems: dict[str, str | None] = {}
        for fpr in {str(p.recipient_key) for p in packages}:
            try:
                problems[fpr] = self.gw.keyring.key(fpr).problem()
            except KeyProblem as err:
                problems[fpr] = str(err)
        good = []
        for package in packages:
            if problem := problems[str(package.recipient_key)]:
                self.retry.setback(package, KeyProblem(
                    f"sealed for {package.recipient_key}, but {problem}: once the partner's key is "
                    "renewed, `gateway retry`; if it was replaced, cancel and send the original again"))  # fmt: skip
            else:
                good.append(package)
        return good

    def exchange_all(self) -> None:
        """Deliver to, publish for, and poll every partner once."""
        for partner in self.gw.ledger.partners():
            due = self.gw.ledger.due(frozenset({State.SEALED}), time.time(), partner.id)
            self.partner_round(partner, due, poll=True)
