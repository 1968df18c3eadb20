"""Mailboxes of pull partners: publishing to `download/`, taking in from `upload/`.

`spool/mailbox/<PARTNER>/download/` holds the sealed packages and receipts the partner
may fetch; a package placed there is `published`, and `delivered` once the partner has
read it whole (the drop server reports that). `upload/` holds what the partner put
there, complete files only; they are handled exactly like files fetched from a push
partner. The drop server's threads only report events; ledger work happens here, on
the threads that call `apply_events()`.
"""

from __future__ import annotations

import base64
import os
import queue
import shutil
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.dropserver import Hooks
from gateway.adapters.files import publish, sha256_file
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.sshkeys import parse_public
from gateway.core.errors import GatewayError, NotFound
from gateway.core.lifecycle import State
from gateway.core.model import Package, Partner, utc
from gateway.core.names import WIRE_NAME, is_temporary, receipt_name, wire_name
from gateway.pipeline.accept import Inbound


class Mailboxes:
    """Publishes to and takes in from the mailboxes of pull partners."""

    def __init__(
        self, home: Home, ledger: Ledger, inbound: Inbound, wake: Callable[[], None] = lambda: None
    ) -> None:
        self.home = home
        self.ledger = ledger
        self.inbound = inbound
        self.wake = wake
        self.events: queue.Queue[tuple[str, str, str]] = queue.Queue()

    def folder(self, partner_id: str) -> Path:
        """The mailbox of one pull partner."""
        return self.home.mailbox / partner_id

    def hooks(self) -> Hooks:
        """What the drop server needs to know and to report."""
        return Hooks(mailbox=self._mailbox, authorized_key=self._authorized_key,
                     downloaded=self._report("downloaded"), uploaded=self._report("uploaded"))  # fmt: skip

    def _pull_partner(self, partner_id: str) -> Partner | None:
        try:
            partner = self.ledger.partner(partner_id)
        except (NotFound, GatewayError):
            return None
        return partner if partner.transport == "pull" else None

    def _mailbox(self, partner_id: str) -> Path | None:
        return self.folder(partner_id) if self._pull_partner(partner_id) else None

    def _authorized_key(self, partner_id: str) -> bytes | None:
        partner = self._pull_partner(partner_id)
        if partner is None or not partner.enabled or not partner.ssh_key:
            return None
        return base64.b64decode(parse_public(partner.ssh_key)[1])

    def _report(self, kind: str) -> Callable[[str, str], None]:
        def report(partner: str, name: str) -> None:
            self.events.put((kind, partner, name))
            self.wake()

        return report

    def apply_events(self) -> None:
        """Record what the drop server reported: packages read whole are delivered."""
        while True:
            try:
                kind, partner_id, name = self.events.get_nowait()
            except queue.Empty:
                return
            match = WIRE_NAME.fullmatch(name)
            if kind == "downloaded" and match and match["suffix"] == ".pgp":
                self._delivered(partner_id, match["pid"])

    def _delivered(self, partner_id: str, pid: str) -> None:
        try:
            package = self.ledger.package(pid)
        except NotFound:
            return
        if package.partner == partner_id and package.state is State.PUBLISHED:
            self.ledger.transition(pid, State.DELIVERED, "deliver", {"how": "read whole by the partner"},
                                   delivered_at=utc(self.ledger.clock()))  # fmt: skip

    def publish(self, partner: Partner, packages: list[Package]) -> None:
        """Place sealed packages in the partner's download folder; each becomes `published`."""
        download = self.folder(partner.id) / "download"
        for package in packages:
            final = download / wire_name(package.package_id)
            tmp = download / f".{final.name}.tmp"
            shutil.copyfile(self.home.sealed_file(package.package_id), tmp)
            publish(tmp, final)
            self.ledger.transition(package.package_id, State.PUBLISHED, "publish",
                                   {"path": f"/download/{final.name}"})  # fmt: skip

    def publish_receipts(self, partner: Partner) -> None:
        """Place the receipts we owe the partner in its download folder."""
        download = self.folder(partner.id) / "download"
        for package in self.ledger.receipts_due(partner.id):
            final = download / receipt_name(package.package_id)
            tmp = download / f".{final.name}.tmp"
            shutil.copyfile(self.inbound.receipt_file(package.package_id), tmp)
            publish(tmp, final)
            self.ledger.note(package.package_id, "receipt.sent", {"path": f"/download/{final.name}",
                             "sha256": sha256_file(final)}, receipt_state="sent")  # fmt: skip

    def take_uploads(self, partner: Partner) -> None:
        """Handle every complete file the partner uploaded, like a fetched one.

        Each is first moved to `spool/incoming/<PARTNER>/`; whatever waits there (a run
        that trouble or a crash cut short) is handled again until its outcome is recorded.
        """
        upload = self.folder(partner.id) / "upload"
        incoming = self.home.incoming / partner.id
        incoming.mkdir(mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(upload)):
            if WIRE_NAME.fullmatch(name) and not is_temporary(name) and (upload / name).is_file():
                os.replace(upload / name, incoming / name)
        for name in sorted(os.listdir(incoming)):
            if match := WIRE_NAME.fullmatch(name):
                self.inbound.handle(partner, incoming / name, match["pid"], match["suffix"])
