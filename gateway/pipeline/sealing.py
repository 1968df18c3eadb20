"""Sealing: `received` -> `sealed`. encrypt(sign(tar(manifest, payload))) for one partner.

Checkpoint, then act: the sealed file is written under a temporary name and published
(fsync, rename, fsync) before the ledger says `sealed`; only then is the plaintext
erased. A crash at any point leaves either a `received` package whose plaintext is
still there (sealed again from scratch) or a `sealed` one whose leftover plaintext
`erase_leftovers()` removes.

The sealed file is hashed on a thread of its own. With a tee (a part on the partner's
server, lent for a large package: `Delivery.beside`) it is read as gpg writes it, and
each block handed on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final, Protocol

from gateway.adapters.files import publish
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.envelope import ChunkReader, Manifest, Party, Payload, tar_chunks
from gateway.core.errors import HostTrouble, LedgerDamaged, NoSuchPackage, SpoolDamaged
from gateway.core.lifecycle import MAY_HOLD_PLAINTEXT, State
from gateway.core.model import Package, Partner
from gateway.pipeline.duties import Duties
from gateway.pipeline.intake import PAYLOAD

log = logging.getLogger("gateway")
#: Bytes read from the sealed file at a time, unless a tee wants other blocks.
BLOCK: Final = 1024 * 1024
#: A payload up to this size is made into its tar in memory and written to gpg by the
#: sealing thread; a larger one streams through a thread of its own (`Keyring.seal`).
IN_MEMORY: Final = 1024 * 1024


class Tee(Protocol):
    """Where the sealed bytes go as well, while gpg writes them, `block` bytes at a time.

    `whole` once it was closed without trouble.
    """

    block: int
    whole: bool

    def write(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...


class Follower(threading.Thread):
    """Reads a file while another process writes it: hashes every byte, hands each block on.

    `done` is set when the writer has finished; the file is then read to its end. A tee
    that fails is dropped and its error kept in `tee_error`; the hashing goes on. With no
    tee the file is read once the writer is done: polling it as it grows cost 1 - 2 ms of
    CPU per small package (4 threads sealing 300 x 4 KiB), and gains nothing.
    """

    def __init__(self, path: Path, tee: Tee | None) -> None:
        super().__init__(name=f"follow {path.name}", daemon=True)
        self.path = path
        self.tee = tee
        self.done = threading.Event()
        self.digest = hashlib.sha256()
        self.size = 0
        self.tee_error: Exception | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as err:  # raised again by the sealing thread
            self.error = err

    def _follow(self) -> None:
        if self.tee is None:  # nothing to hand on: following would only cost wakeups
            self.done.wait()
        while not self.path.exists():
            if self.done.is_set():
                return  # the writer failed before creating it
            self.done.wait(0.002)
        block = self.tee.block if self.tee else BLOCK
        with self.path.open("rb") as f:
            while True:
                finished = self.done.is_set()
                if not finished and os.fstat(f.fileno()).st_size - self.size < block:
                    self.done.wait(0.005)
                    continue
                if not (chunk := f.read(block)):
                    break
                self.digest.update(chunk)
                self.size += len(chunk)
                if tee := self.tee:
                    self._tee(tee.write, chunk)
        if tee := self.tee:
            self._tee(tee.close)

    def _tee(self, step: Callable[..., None], *args: bytes) -> None:
        try:
            step(*args)
        except Exception as err:  # whatever the tee's trouble, the hashing goes on
            self.tee_error, self.tee = err, None


def manifest_for(package: Package, sender: Party, recipient: Party, supersedes: str | None = None,
                 use_restrictions: tuple[str, ...] | None = None) -> Manifest:  # fmt: skip
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
        supersedes=supersedes,
        use_restrictions=use_restrictions,
    )


class Sealer:
    """Seals received packages for their partner."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, gateway_id: str,
                 duties: Duties) -> None:  # fmt: skip
        self.duties = duties
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.gateway_id = gateway_id

    def seal(self, package: Package, partner: Partner, tee: Tee | None = None) -> Package:
        """Seal one `received` package for its `partner` and erase its plaintext.

        With `tee`, the sealed bytes also go there as gpg writes them (`tee.whole` says
        whether all of them did).
        """
        own_key = self.ledger.own_key()
        if own_key is None:
            raise LedgerDamaged(
                "the ledger names no key of the gateway's own: restore ledger.db from backup"
            )
        sender = Party(self.gateway_id, own_key)
        manifest = manifest_for(package, sender, Party(partner.id, partner.openpgp_key),
                                self.duties.supersedes(package.package_id),
                                self.duties.restrictions(package))  # fmt: skip
        final = self.home.sealed_file(package.package_id)
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.unlink(missing_ok=True)  # the follower must find gpg's file, not an older one
        mtime = int(self.ledger.clock.now())
        try:
            payload = (self.home.work / package.package_id / PAYLOAD).open("rb")
        except FileNotFoundError:
            raise SpoolDamaged(
                f"the plaintext of {package.package_id} is missing from spool/work: it cannot "
                "be sealed; cancel it and send the original again"
            ) from None
        follower = Follower(tmp, tee)
        if tee is not None:
            follower.start()
        try:
            with payload:
                chunks = tar_chunks(manifest, payload, mtime)
                plaintext: IO[bytes] | io.RawIOBase = (
                    io.BytesIO(b"".join(chunks))  # gpg is fed by this thread, not one of its own
                    if (package.payload_size or 0) <= IN_MEMORY
                    else ChunkReader(chunks)
                )
                self.keyring.seal(
                    plaintext,
                    tmp,
                    sender.key,
                    partner.openpgp_key,
                    hide=bool(partner.hide_recipient),
                )
        except BaseException:
            follower.tee = None  # gpg failed: nothing more is sent
            raise
        finally:
            follower.done.set()
            if tee is not None:
                follower.join()
        if tee is None:
            follower.run()  # nothing to hand on: gpg's file is hashed here, no thread needed
        if follower.error is not None or follower.size != tmp.stat().st_size:
            tmp.unlink(missing_ok=True)
            raise HostTrouble(
                f"the sealed file of {package.package_id} could not be read back whole "
                f"({follower.error or 'its size changed'}); it is sealed again on the next try"
            )
        if follower.tee_error is not None:
            log.warning("%s: sealed, not uploaded beside gpg: %s", package.package_id,
                        follower.tee_error)  # fmt: skip
        digest, size = follower.digest.hexdigest(), follower.size
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
                detail={"what": "plaintext payload, after sealing"},
            )
        self.erase_plaintext(package.package_id)
        return sealed

    def erase_plaintext(self, package_id: str) -> None:
        """Remove a sealed package's plaintext from the spool (its erasure is recorded with
        `sealed`). Not flushed: a folder a crash brings back is erased at the next start
        (`erase_leftovers`), and a flush would not wipe the file's blocks either."""
        with contextlib.suppress(FileNotFoundError):  # erased before
            shutil.rmtree(self.home.work / package_id)

    def erase_leftovers(self) -> None:
        """After a crash: erase plaintext of packages already sealed, and half-written files."""
        for tmp in self.home.sealed.glob(".*.tmp"):
            tmp.unlink()
        for folder in self.home.work.iterdir():
            try:
                package = self.ledger.package(folder.name)
            except NoSuchPackage:  # not in the ledger yet: Intake.recover's business
                continue
            # An inbound package's work folder is scratch for opening it: never needed after.
            if package.direction == "in" or package.state not in MAY_HOLD_PLAINTEXT:
                self.erase_plaintext(package.package_id)
