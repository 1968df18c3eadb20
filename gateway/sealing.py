"""Sealing: `received` -> `sealed`. encrypt(sign(tar(manifest, payload))) for one partner.

Checkpoint, then act: the sealed file is written under a temporary name and published
(fsync, rename, fsync) before the ledger says `sealed`; only then is the plaintext
erased. A crash at any point leaves either a `received` package whose plaintext is
still there (sealed again from scratch) or a `sealed` one whose leftover plaintext
`erase_leftovers()` removes.
"""

from __future__ import annotations

import shutil

from gateway.envelope import ChunkReader, Manifest, Party, Payload, tar_chunks
from gateway.errors import KeyProblem, NotFound, PartnerError, UsageError
from gateway.files import fsync_dir, publish, sha256_file
from gateway.home import Home
from gateway.intake import PAYLOAD
from gateway.ledger import Ledger
from gateway.lifecycle import State
from gateway.openpgp import Keyring
from gateway.records import Package


def manifest_for(package: Package, sender: Party, recipient: Party) -> Manifest:
    """The manifest that describes `package` from `sender` to `recipient`."""
    assert package.payload_name and package.payload_size is not None and package.payload_sha256
    return Manifest(
        package_id=package.package_id,
        kind=str(package.kind),
        sender=sender,
        recipient=recipient,
        created_at=package.created_at[:19] + "Z",
        payload=Payload(package.payload_name, package.payload_size, package.payload_sha256),
        reference=package.reference,
        legal_basis=package.legal_basis,
        marking=package.marking,
        in_reply_to=package.in_reply_to,
    )


class Sealer:
    """Seals received packages for their partner."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, gateway_id: str) -> None:
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.gateway_id = gateway_id

    def seal(self, package: Package) -> Package:
        """Seal one `received` package and erase its plaintext."""
        partner = self.ledger.partner(str(package.partner))
        if not partner.enabled:
            raise PartnerError(
                f"partner {partner.id} is disabled: `gateway partner enable` it, then retry"
            )
        own_key = self.ledger.own_key()
        if own_key is None:
            raise KeyProblem(
                "the ledger names no key of the gateway's own: restore ledger.db from backup"
            )
        sender = Party(self.gateway_id, own_key)
        manifest = manifest_for(package, sender, Party(partner.id, partner.openpgp_key))
        final = self.home.sealed_file(package.package_id)
        tmp = final.with_name(f".{final.name}.tmp")
        mtime = int(self.ledger.clock())
        with (self.home.work / package.package_id / PAYLOAD).open("rb") as payload:
            plaintext = ChunkReader(tar_chunks(manifest, payload, mtime))
            self.keyring.seal(
                plaintext,
                tmp,
                sender.key,
                partner.openpgp_key,
                hide=bool(partner.hide_recipient),
            )
        digest, size = sha256_file(tmp), tmp.stat().st_size
        publish(tmp, final)
        with self.ledger.transaction():  # one commit: the erasure follows at once, or on restart
            sealed = self.ledger.transition(
                package.package_id,
                State.SEALED,
                "seal",
                {
                    "sender_key": sender.key,
                    "recipient_key": partner.openpgp_key,
                    "ciphertext_sha256": digest,
                    "ciphertext_size": size,
                },
                sender_key=sender.key,
                recipient_key=partner.openpgp_key,
                ciphertext_sha256=digest,
                ciphertext_size=size,
            )
            self.ledger.record(
                "erase",
                package_id=package.package_id,
                partner=package.partner,
                category="erasure",
                detail={"what": "plaintext payload, after sealing"},
            )
        self.erase_plaintext(package.package_id)
        return sealed

    def erase_plaintext(self, package_id: str) -> None:
        """Remove a sealed package's plaintext from the spool (its erasure is recorded with `sealed`)."""
        folder = self.home.work / package_id
        if folder.exists():
            shutil.rmtree(folder)
            fsync_dir(self.home.work)

    def erase_leftovers(self) -> None:
        """After a crash: erase plaintext of packages already sealed, and half-written files."""
        for tmp in self.home.sealed.glob(".*.tmp"):
            tmp.unlink()
        for folder in self.home.work.iterdir():
            try:
                package = self.ledger.package(folder.name)
            except (NotFound, UsageError):  # not in the ledger yet: Intake.recover's business
                continue
            if package.direction == "out" and package.state not in (
                State.RECEIVED,
                State.HELD,
                State.FAILED,
            ):
                self.erase_plaintext(package.package_id)
