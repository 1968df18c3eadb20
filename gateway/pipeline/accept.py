"""Packages from partners: `fetched` -> `accepted` or `rejected`, and our receipt for each.

Verify before parsing (research/domain.md section 5 rule 10): nothing fetched is read
until GnuPG has shown it was signed by the partner's pinned key and encrypted to us. A
package is delivered to `spool/inbound/<PARTNER>/<package_id>/` only after every check
of SPEC section 4 has passed, and then in one rename. Anything else goes to quarantine
with its reason; the ledger records every outcome before the fetched file may be
removed from the partner's server.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path
from typing import Final

from gateway.adapters import quarantine
from gateway.adapters.archive import unpack
from gateway.adapters.files import fsync_dir, fsync_file, publish, sha256_file
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.envelope import Manifest
from gateway.core.errors import GatewayError, Rejected, SpoolDamaged
from gateway.core.lifecycle import State
from gateway.core.model import Package, Partner, utc
from gateway.core.names import MANIFEST, new_package_id, package_sender
from gateway.core.receipts import Receipt
from gateway.core.settings import Settings
from gateway.pipeline.duties import Duties

log = logging.getLogger("gateway")
ENVELOPE_OVERHEAD: Final = 1024 * 1024  # manifest, tar headers and OpenPGP framing, generously


class Accept:
    """Verifies, delivers and answers packages from partners."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, settings: Settings,
                 duties: Duties) -> None:  # fmt: skip
        self.duties = duties
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.settings = settings
        self.us = settings.gateway_id

    def recover(self) -> None:
        """After a crash: remove deliveries to spool/inbound that never got their rename
        (the package is still on the partner's side, or in spool/incoming, and is
        opened again)."""
        for tmp in self.home.inbound.glob("*/.*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)

    def max_bytes(self) -> int:
        """The largest package file that is fetched at all."""
        return self.settings.daemon_max_package_bytes + ENVELOPE_OVERHEAD

    def package(self, partner: Partner, path: Path, pid: str) -> None:
        """Verify, unpack and deliver one package; queue its receipt; or reject it."""
        existing = self.ledger.find(pid)
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
            now = utc(self.ledger.clock.now())
            self.ledger.insert(Package(package_id=pid, direction="in", state=State.FETCHED, created_at=now,
                                       updated_at=now, partner=partner.id, ciphertext_sha256=digest,
                                       ciphertext_size=path.stat().st_size), "fetch", {"sha256": digest})  # fmt: skip
        work = self.home.work / pid
        shutil.rmtree(work, ignore_errors=True)  # a run a crash cut short
        work.mkdir(mode=0o700)
        signer = None
        try:
            signer = self.keyring.open_message(path, work / "envelope.tar", self.ledger.partner_signers(partner.id, self.settings.keys_overlap_days * 86400),
                                               encrypted=True, max_output=self.max_bytes())  # fmt: skip
            manifest = unpack(
                work / "envelope.tar", work / "payload", self.settings.daemon_max_package_bytes
            )
            self._check(manifest, partner, pid, signer)
            self._deliver(partner, manifest, work / "payload")
            self._receipt_out(pid, partner, digest, None)
            with self.ledger.transaction():  # accepted, and the answer clock it starts, together
                self.duties.accepted(pid, partner.id, manifest)
                self._accepted(pid, manifest, signer)
            path.unlink()
        except Rejected as problem:
            self._reject(partner, path, pid, digest, problem, signer or problem.signer)
        except (GatewayError, OSError):
            raise  # the host's trouble, not the file's: it waits and is handled again
        except Exception as err:  # poison input: whatever it does, it never blocks the next file
            log.exception("%s from %s: unexpected error while opening it", pid, partner.id)
            poison = Rejected(f"it could not be read (unexpected {type(err).__name__})")
            self._reject(partner, path, pid, digest, poison, signer)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _accepted(self, pid: str, manifest: Manifest, signer: str) -> None:
        self.ledger.transition(pid, State.ACCEPTED, "accept", {"kind": manifest.kind, "signer": signer,
                               "payload_sha256": manifest.payload.sha256, "legal_basis": manifest.legal_basis},
                               receipt_state="due", kind=manifest.kind, payload_name=manifest.payload.name,
                               payload_size=manifest.payload.size, payload_sha256=manifest.payload.sha256,
                               reference=manifest.reference, legal_basis=manifest.legal_basis,
                               marking=manifest.marking, in_reply_to=manifest.in_reply_to,
                               sender_key=signer, recipient_key=manifest.recipient.key)  # fmt: skip

    def _reject(self, partner: Partner, path: Path, pid: str, digest: str, problem: Rejected,
                signer: str | None) -> None:  # fmt: skip
        """Quarantine the package, record it `rejected`, and tell a proven sender why."""
        authenticated = signer is not None  # a rejected receipt goes only to a proven sender
        if authenticated:
            self._receipt_out(pid, partner, digest, str(problem))
        entry = new_package_id(self.us, self.ledger.clock.now())
        quarantine.put(self.home.quarantine, path, entry, {
            "what_arrived": "package", "partner": partner.id, "package_id": pid,
            "original_name": f"{pid}.pgp", "reason": str(problem), "at": utc(self.ledger.clock.now()),
            "what_to_do": "nothing was delivered; tell the partner if it keeps happening",
        })  # fmt: skip
        self.ledger.transition(pid, State.REJECTED, "reject", {"reason": str(problem), "quarantine": entry},
                               last_error=str(problem), receipt_state="due" if authenticated else None)  # fmt: skip

    def _check(self, manifest: Manifest, partner: Partner, pid: str, signer: str) -> None:
        """SPEC section 4: addressed to us and our key, from this partner and its key."""
        if manifest.package_id != pid:
            raise Rejected(f"the manifest is for {manifest.package_id}, not {pid}")
        if manifest.sender.id != partner.id or manifest.sender.key != signer:
            raise Rejected(f"the manifest's sender is {manifest.sender.id} with key {manifest.sender.key}, "
                           f"not {partner.id} with the key that signed it")  # fmt: skip
        if manifest.payload.name == MANIFEST:
            raise Rejected(
                f"the payload is named {MANIFEST}, which is the gateway's own file beside it",
                signer,
            )
        if manifest.recipient.id != self.us or manifest.recipient.key not in self.ledger.own_keys():
            raise Rejected(f"the package is addressed to {manifest.recipient.id} with key "
                           f"{manifest.recipient.key}, not to this gateway ({self.us})")  # fmt: skip

    def _deliver(self, partner: Partner, manifest: Manifest, payload: Path) -> None:
        """Make `spool/inbound/<PARTNER>/<package_id>/` appear whole, in one rename.

        Already there with this manifest: a crash came after the rename and before
        `accepted` was committed, and this is the same verified package again.
        """
        folder = self.home.inbound / partner.id
        folder.mkdir(mode=0o700, exist_ok=True)
        final, tmp = folder / manifest.package_id, folder / f".{manifest.package_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            if (final / MANIFEST).read_bytes() != manifest.to_json():
                raise SpoolDamaged(
                    f"spool/inbound/{partner.id}/{manifest.package_id} holds another package: "
                    "move it aside; the package is opened again on the next poll"
                )
            return
        tmp.mkdir(mode=0o700)
        (tmp / MANIFEST).write_bytes(manifest.to_json())
        os.replace(payload, tmp / manifest.payload.name)
        for path in (tmp / MANIFEST, tmp / manifest.payload.name):
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
        again = "due" if self.home.receipt_file(existing.package_id).exists() else None
        self.ledger.note(
            existing.package_id, "replay", {"sha256": sha256_file(path)}, receipt_state=again
        )
        path.unlink()

    def _refuse_package_file(self, partner: Partner, path: Path, pid: str, reason: str) -> None:
        entry = new_package_id(self.us, self.ledger.clock.now())
        quarantine.put(self.home.quarantine, path, entry, {
            "what_arrived": "package", "partner": partner.id, "original_name": f"{pid}.pgp",
            "reason": reason, "at": utc(self.ledger.clock.now()), "what_to_do": "nothing was delivered",
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
        out = self.home.receipt_file(pid)
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
