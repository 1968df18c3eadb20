"""What partners send us: receipts for our packages, and packages of their own.

Verify before parsing (research/domain.md section 5 rule 10): nothing fetched is read
until GnuPG has shown it was signed by the partner's pinned key (and, for a package,
encrypted to us). A package is delivered to `spool/inbound/<PARTNER>/<package_id>/`
only after every check of SPEC section 4 has passed, and then in one rename. Anything
else goes to quarantine with its reason; the ledger records every outcome before the
fetched file may be removed from the partner's server.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Final

from gateway.adapters import quarantine
from gateway.adapters.files import fsync_dir, fsync_file, publish, sha256_file, write_atomic
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.envelope import Manifest, unpack
from gateway.core.errors import NotFound, Rejected
from gateway.core.lifecycle import State
from gateway.core.model import Package, Partner, utc
from gateway.core.names import new_package_id, package_sender
from gateway.core.receipts import MAX_BYTES as MAX_RECEIPT_BYTES
from gateway.core.receipts import Receipt, closes, parse_receipt
from gateway.core.settings import Settings

ENVELOPE_OVERHEAD: Final = 1024 * 1024  # manifest, tar headers and OpenPGP framing, generously


class Inbound:
    """Handles files fetched from (or uploaded by) partners."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, settings: Settings) -> None:
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.settings = settings
        self.us = settings.gateway_id

    def max_bytes(self, name: str) -> int:
        """The largest file of this name that is fetched at all."""
        if name.endswith(".receipt"):
            return MAX_RECEIPT_BYTES * 4  # armored, signed and encrypted around the JSON
        return self.settings.daemon_max_package_bytes + ENVELOPE_OVERHEAD

    def handle(self, partner: Partner, path: Path, pid: str, suffix: str) -> None:
        """Handle one fetched file named `<pid><suffix>`; its outcome is in the ledger after."""
        if suffix == ".receipt":
            self.receipt(partner, path, pid)
        else:
            self.package(partner, path, pid)

    # -- receipts for our packages ------------------------------------------------------

    def receipt(self, partner: Partner, path: Path, pid: str) -> None:
        """Close one of our packages with the partner's receipt, or quarantine the receipt."""
        plain = self.home.work / f".{pid}.receipt.{os.getpid()}"
        try:
            if path.stat().st_size > self.max_bytes(".receipt"):
                raise Rejected("the receipt is too large to be one")
            signer = self.keyring.open_message(path, plain, self._signers(partner),
                                               encrypted=False, max_output=MAX_RECEIPT_BYTES)  # fmt: skip
            receipt = parse_receipt(plain.read_bytes())
            if receipt.package_id != pid:
                raise Rejected(
                    f"the file is named for {pid} but the receipt is for {receipt.package_id}"
                )
            self._apply(partner, receipt, path, signer)
        except Rejected as problem:
            self._refuse_receipt(partner, path, pid, str(problem))
        finally:
            plain.unlink(missing_ok=True)

    def _apply(self, partner: Partner, receipt: Receipt, path: Path, signer: str) -> None:
        try:
            package = self.ledger.package(receipt.package_id)
        except NotFound:
            raise Rejected(f"{receipt.package_id} is no package of ours") from None
        kept = self.home.receipts_in / f"{receipt.package_id}.json"
        if package.state in (State.ACKNOWLEDGED, State.REFUSED) and kept.exists():
            if Receipt(**json.loads(kept.read_text())) != receipt:
                raise Rejected("a second receipt for this package, with different content")
            self.ledger.record(
                "receipt.duplicate", package_id=package.package_id, partner=partner.id
            )
            path.unlink()
            return
        new = closes(receipt, package, partner.id, self.us)
        os.replace(
            path, self.home.receipts_in / f"{receipt.package_id}.receipt"
        )  # the signed evidence
        write_atomic(kept, json.dumps(receipt.__dict__).encode())
        fsync_dir(self.home.receipts_in)
        if package.state is not State.DELIVERED:  # the upload landed, then we crashed
            self.ledger.transition(package.package_id, State.DELIVERED, "deliver", {"confirmed_by": "receipt"},
                                   delivered_at=utc(self.ledger.clock()))  # fmt: skip
        detail = {"disposition": receipt.disposition, "reason": receipt.reason, "signer": signer,
                  "received_at": receipt.received_at, "ciphertext_sha256": receipt.ciphertext_sha256}  # fmt: skip
        self.ledger.transition(package.package_id, new, "receipt", detail,
                               last_error=f"refused by {partner.id}: {receipt.reason}" if receipt.reason else None)  # fmt: skip
        # The partner's signed receipt and the ledger's hash are the evidence now; the
        # ciphertext itself is no longer needed here, nor in a pull partner's mailbox.
        published = self.home.mailbox / partner.id / "download" / f"{package.package_id}.pgp"
        for path in (self.home.sealed_file(package.package_id), published):
            path.unlink(missing_ok=True)

    def _refuse_receipt(self, partner: Partner, path: Path, pid: str, reason: str) -> None:
        entry = new_package_id(self.us)
        quarantine.put(self.home.quarantine, path, entry, {
            "what_arrived": "receipt", "partner": partner.id, "original_name": f"{pid}.receipt",
            "reason": reason, "at": utc(self.ledger.clock()),
            "what_to_do": "nothing changed; if the partner's receipts keep failing, check its key with it",
        })  # fmt: skip
        known = self._existing(pid) is not None
        self.ledger.record("receipt.quarantined", package_id=pid if known else None, partner=partner.id,
                           detail={"reason": reason, "quarantine": entry, "name": f"{pid}.receipt"})  # fmt: skip

    # -- packages from partners -----------------------------------------------------------

    def package(self, partner: Partner, path: Path, pid: str) -> None:
        """Verify, unpack and deliver one package; queue its receipt; or reject it."""
        existing = self._existing(pid)
        if existing is not None and existing.state is not State.FETCHED:
            self._replay(partner, path, existing)
            return
        if package_sender(pid) != partner.id:
            self._refuse_package_file(
                partner, path, pid, f"{pid} is not a package id of {partner.id}"
            )
            return
        digest = sha256_file(path)
        if existing is None:
            now = utc(self.ledger.clock())
            self.ledger.insert(Package(package_id=pid, direction="in", state=State.FETCHED, created_at=now,
                                       updated_at=now, partner=partner.id, ciphertext_sha256=digest,
                                       ciphertext_size=path.stat().st_size), "fetch", {"sha256": digest})  # fmt: skip
        work = self.home.work / pid
        shutil.rmtree(work, ignore_errors=True)  # a run a crash cut short
        work.mkdir(mode=0o700)
        signer = None
        try:
            signer = self.keyring.open_message(path, work / "envelope.tar", self._signers(partner),
                                               encrypted=True, max_output=self.max_bytes(".pgp"))  # fmt: skip
            manifest = unpack(
                work / "envelope.tar", work / "payload", self.settings.daemon_max_package_bytes
            )
            self._check(manifest, partner, pid, signer)
            self._deliver(partner, manifest, work / "payload")
            self._receipt_out(pid, partner, digest, None)
            self.ledger.transition(pid, State.ACCEPTED, "accept", {"kind": manifest.kind, "signer": signer,
                                   "payload_sha256": manifest.payload.sha256}, receipt_state="due",
                                   kind=manifest.kind, payload_name=manifest.payload.name,
                                   payload_size=manifest.payload.size, payload_sha256=manifest.payload.sha256,
                                   reference=manifest.reference, legal_basis=manifest.legal_basis,
                                   marking=manifest.marking, in_reply_to=manifest.in_reply_to,
                                   sender_key=signer, recipient_key=manifest.recipient.key)  # fmt: skip
            path.unlink()
        except Rejected as problem:
            signer = signer or problem.signer
            authenticated = signer is not None  # a rejected receipt goes only to a proven sender
            if authenticated:
                self._receipt_out(pid, partner, digest, str(problem))
            entry = new_package_id(self.us)
            quarantine.put(self.home.quarantine, path, entry, {
                "what_arrived": "package", "partner": partner.id, "package_id": pid,
                "original_name": f"{pid}.pgp", "reason": str(problem), "at": utc(self.ledger.clock()),
                "what_to_do": "nothing was delivered; tell the partner if it keeps happening",
            })  # fmt: skip
            self.ledger.transition(pid, State.REJECTED, "reject", {"reason": str(problem), "quarantine": entry},
                                   last_error=str(problem), receipt_state="due" if authenticated else None)  # fmt: skip
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _check(self, manifest: Manifest, partner: Partner, pid: str, signer: str) -> None:
        """SPEC section 4: addressed to us and our key, from this partner and its key."""
        if manifest.package_id != pid:
            raise Rejected(f"the manifest is for {manifest.package_id}, not {pid}")
        if manifest.sender.id != partner.id or manifest.sender.key != signer:
            raise Rejected(f"the manifest's sender is {manifest.sender.id} with key {manifest.sender.key}, "
                           f"not {partner.id} with the key that signed it")  # fmt: skip
        if manifest.recipient.id != self.us or manifest.recipient.key not in self.ledger.own_keys():
            raise Rejected(f"the package is addressed to {manifest.recipient.id} with key "
                           f"{manifest.recipient.key}, not to this gateway ({self.us})")  # fmt: skip

    def _deliver(self, partner: Partner, manifest: Manifest, payload: Path) -> None:
        """Make `spool/inbound/<PARTNER>/<package_id>/` appear whole, in one rename."""
        folder = self.home.inbound / partner.id
        folder.mkdir(mode=0o700, exist_ok=True)
        final, tmp = folder / manifest.package_id, folder / f".{manifest.package_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        (tmp / "manifest.json").write_bytes(manifest.to_json())
        os.replace(payload, tmp / manifest.payload.name)
        for path in (tmp / "manifest.json", tmp / manifest.payload.name):
            fsync_file(path)
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(folder)

    def _replay(self, partner: Partner, path: Path, existing: Package) -> None:
        """A package id seen before: never delivered again; its receipt is sent again."""
        if existing.direction != "in" or existing.partner != partner.id:
            self._refuse_package_file(
                partner, path, existing.package_id, f"{existing.package_id} is not new"
            )
            return
        again = (
            "due" if (self.home.receipts_out / f"{existing.package_id}.receipt").exists() else None
        )
        self.ledger.note(
            existing.package_id, "replay", {"sha256": sha256_file(path)}, receipt_state=again
        )
        path.unlink()

    def _refuse_package_file(self, partner: Partner, path: Path, pid: str, reason: str) -> None:
        entry = new_package_id(self.us)
        quarantine.put(self.home.quarantine, path, entry, {
            "what_arrived": "package", "partner": partner.id, "original_name": f"{pid}.pgp",
            "reason": reason, "at": utc(self.ledger.clock()), "what_to_do": "nothing was delivered",
        })  # fmt: skip
        self.ledger.record(
            "package.quarantined",
            partner=partner.id,
            detail={"reason": reason, "quarantine": entry},
        )

    # -- our receipts ---------------------------------------------------------------------

    def _receipt_out(
        self, pid: str, partner: Partner, ciphertext_sha256: str, reason: str | None
    ) -> None:
        """Write our signed, encrypted receipt for an inbound package (once; kept as evidence)."""
        out = self.receipt_file(pid)
        if out.exists():
            return
        package = self.ledger.package(pid)
        receipt = Receipt(pid, self.us, partner.id, package.created_at[:19] + "Z", ciphertext_sha256,
                          "rejected" if reason else "accepted", reason)  # fmt: skip
        own = self.ledger.own_key()
        assert own is not None
        tmp = out.with_name(f".{out.name}.tmp")
        self.keyring.seal(io.BytesIO(receipt.to_json()), tmp, own, partner.openpgp_key,
                          hide=bool(partner.hide_recipient))  # fmt: skip
        publish(tmp, out)

    def _signers(self, partner: Partner) -> frozenset[str]:
        """The partner's key, and its keys retired within the rotation overlap."""
        return self.ledger.partner_signers(partner.id, self.settings.keys_overlap_days * 86400)

    def receipt_file(self, pid: str) -> Path:
        """Where our receipt for inbound package `pid` is kept."""
        return self.home.receipts_out / f"{pid}.receipt"

    def _existing(self, pid: str) -> Package | None:
        try:
            return self.ledger.package(pid)
        except NotFound:
            return None
