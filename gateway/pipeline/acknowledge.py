"""The last outbound hop: a partner's receipt closes one of our packages.

Verify before parsing (research/domain.md section 5 rule 10): nothing is read until
GnuPG has shown the receipt was signed by the partner's pinned key. A receipt that
matches what was sent (SPEC section 5) moves the package to `acknowledged` or
`refused`; the signed receipt is kept as the evidence. Anything else is quarantined
with its reason and recorded; the package's state does not change.

A crash before the new state is committed leaves the receipt where it came from (the
partner's server, or spool/incoming for a pull partner): it is applied again. A crash
after it leaves a copy that is found again as a duplicate of the same receipt, and
removed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from gateway.adapters import quarantine
from gateway.adapters.files import write_atomic
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.errors import GatewayError, Rejected
from gateway.core.lifecycle import RECEIPTED, State
from gateway.core.model import Partner, utc
from gateway.core.names import new_package_id
from gateway.core.receipts import MAX_BYTES, Receipt, closes, parse_receipt

log = logging.getLogger("gateway")


class Acknowledge:
    """Applies partners' receipts to our packages."""

    def __init__(self, home: Home, ledger: Ledger, keyring: Keyring, gateway_id: str,
                 overlap_seconds: float) -> None:  # fmt: skip
        self.home = home
        self.ledger = ledger
        self.keyring = keyring
        self.us = gateway_id
        self.overlap_seconds = overlap_seconds

    def receipt(self, partner: Partner, path: Path, pid: str) -> None:
        """Close one of our packages with the partner's receipt, or quarantine the receipt."""
        plain = self.home.work / f".{pid}.receipt.{os.getpid()}"
        try:
            if path.stat().st_size > 4 * MAX_BYTES:  # armored, signed and encrypted around the JSON
                raise Rejected("the receipt is too large to be one")
            signers = self.ledger.partner_signers(partner.id, self.overlap_seconds)
            signer = self.keyring.open_message(path, plain, signers, encrypted=False,
                                               max_output=MAX_BYTES)  # fmt: skip
            receipt = parse_receipt(plain.read_bytes())
            if receipt.package_id != pid:
                raise Rejected(
                    f"the file is named for {pid} but the receipt is for {receipt.package_id}"
                )
            self._apply(partner, receipt, path, signer)
        except Rejected as problem:
            self._refuse(partner, path, pid, str(problem))
        except (GatewayError, OSError):
            raise  # the host's trouble, not the file's: it waits and is handled again
        except Exception as err:  # poison input: whatever it does, it never blocks the next file
            log.exception("%s.receipt from %s: unexpected error while reading it", pid, partner.id)
            self._refuse(
                partner, path, pid, f"it could not be read (unexpected {type(err).__name__})"
            )
        finally:
            plain.unlink(missing_ok=True)

    def _apply(self, partner: Partner, receipt: Receipt, path: Path, signer: str) -> None:
        package = self.ledger.find(receipt.package_id)
        if package is None:
            raise Rejected(f"{receipt.package_id} is no package of ours")
        kept = self.home.receipts_in / f"{receipt.package_id}.json"
        if package.state in RECEIPTED and kept.exists():
            if Receipt(**json.loads(kept.read_text())) != receipt:
                raise Rejected("a second receipt for this package, with different content")
            self.ledger.record(
                "receipt.duplicate", package_id=package.package_id, partner=partner.id
            )
            path.unlink()
            return
        new = closes(receipt, package, partner.id, self.us)
        # The signed receipt is the evidence, kept beside what it said. The file as it came
        # stays where it is until the package's new state is committed: a crash before
        # then finds it again, and applies it again.
        write_atomic(self.home.receipts_in / f"{receipt.package_id}.receipt", path.read_bytes())
        write_atomic(kept, json.dumps(receipt.__dict__).encode())
        if package.state is not State.DELIVERED:  # the upload landed, then we crashed
            self.ledger.transition(package.package_id, State.DELIVERED, "deliver", {"confirmed_by": "receipt"},
                                   delivered_at=utc(self.ledger.clock.now()))  # fmt: skip
        detail = {"disposition": receipt.disposition, "reason": receipt.reason, "signer": signer,
                  "received_at": receipt.received_at, "ciphertext_sha256": receipt.ciphertext_sha256}  # fmt: skip
        self.ledger.transition(package.package_id, new, "receipt", detail,
                               last_error=f"refused by {partner.id}: {receipt.reason}" if receipt.reason else None)  # fmt: skip
        # The partner's signed receipt and the ledger's hash are the evidence now; the
        # ciphertext itself is no longer needed here, nor in a pull partner's mailbox.
        published = self.home.mailbox / partner.id / "download" / f"{package.package_id}.pgp"
        for leftover in (self.home.sealed_file(package.package_id), published, path):
            leftover.unlink(missing_ok=True)

    def _refuse(self, partner: Partner, path: Path, pid: str, reason: str) -> None:
        entry = new_package_id(self.us, self.ledger.clock.now())
        quarantine.put(self.home.quarantine, path, entry, {
            "what_arrived": "receipt", "partner": partner.id, "original_name": f"{pid}.receipt",
            "reason": reason, "at": utc(self.ledger.clock.now()),
            "what_to_do": "nothing changed; if the partner's receipts keep failing, check its key with it",
        })  # fmt: skip
        known = self.ledger.find(pid) is not None
        self.ledger.record("receipt.quarantined", package_id=pid if known else None, partner=partner.id,
                           detail={"reason": reason, "quarantine": entry, "name": f"{pid}.receipt"})  # fmt: skip
