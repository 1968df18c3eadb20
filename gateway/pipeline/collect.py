"""Polling a push partner: fetch what it left for us, answer with receipts.

One SFTP session per poll (the delivery turn's, if there was one); the files fetched are
handled a few at a time. Only names of the contract (`<package_id>.pgp`,
`<package_id>.receipt`) are fetched; anything else in the partner's folder is left alone
and logged. A fetched file is removed from the partner's server only after its outcome
is committed in the ledger, so a cut connection or a crash re-fetches it, and the
ledger's memory of package ids makes that harmless.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Final

from gateway.adapters.files import sha256_file
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.sftp import SftpPartner
from gateway.core.errors import GatewayError, Transient
from gateway.core.model import Partner
from gateway.core.names import WIRE_NAME, receipt_name
from gateway.pipeline.accept import Inbound
from gateway.transports.push import Deliverer

log = logging.getLogger("gateway")
MAX_FILES_PER_POLL: Final = 500
#: Threads handling fetched files. Each package costs two gpg runs (open, and the receipt),
#: each waiting on its own process; one thread left a core idle.
HANDLERS: Final = 4


class Poller:
    """Fetches from and answers one push partner at a time."""

    def __init__(self, home: Home, ledger: Ledger, inbound: Inbound, deliverer: Deliverer) -> None:
        self.home = home
        self.ledger = ledger
        self.inbound = inbound
        self.deliverer = deliverer

    def poll(self, partner: Partner) -> None:
        """Fetch and handle everything the partner left for us, then send the receipts we owe."""
        if not partner.enabled:
            return
        try:
            with self.deliverer.connected(partner) as sftp:
                self.fetch_all(partner, sftp)
                self.send_receipts(partner, sftp)
        except Transient as err:
            log.warning("poll of %s: %s", partner.id, err)
        except GatewayError as err:
            log.error("poll of %s: %s", partner.id, err)

    def fetch_all(self, partner: Partner, sftp: SftpPartner) -> None:
        """Fetch, handle and remove each file addressed to us, up to a bound per poll.

        This thread fetches and removes; HANDLERS threads handle (two gpg runs each for a
        package). A file is removed only once its handling has ended, which commits its
        outcome. Once a handling fails, no more are fetched; the ones in hand are finished.
        """
        listing = sftp.list_download()
        wanted = [(f, m) for f in listing if (m := WIRE_NAME.fullmatch(f.name))]
        if skipped := len(listing) - len(wanted):
            log.warning(
                "poll of %s: %d files with names outside the contract left alone",
                partner.id,
                skipped,
            )
        folder = self.home.incoming / partner.id
        folder.mkdir(mode=0o700, exist_ok=True)
        with ThreadPoolExecutor(HANDLERS, thread_name_prefix=f"handle-{partner.id}") as pool:
            in_hand: dict[Future[None], str] = {}
            try:
                for remote, match in wanted[:MAX_FILES_PER_POLL]:
                    limit = self.inbound.max_bytes(match["suffix"])
                    if remote.size > limit:
                        self.ledger.record("fetch.refused", partner=partner.id,
                                           detail={"name": remote.name, "size": remote.size, "reason": f"larger than {limit} bytes"})  # fmt: skip
                        sftp.remove_download(remote.name)
                        continue
                    local = folder / remote.name
                    sftp.fetch(remote.name, local, limit, remote.size)
                    job = pool.submit(
                        self.inbound.handle, partner, local, match["pid"], match["suffix"]
                    )
                    in_hand[job] = remote.name
                    if len(in_hand) >= 2 * HANDLERS:
                        self._remove_handled(sftp, in_hand, FIRST_COMPLETED)
            except BaseException:
                with contextlib.suppress(Exception):  # each failure is logged; this one goes on
                    self._remove_handled(sftp, in_hand, ALL_COMPLETED)
                raise
            self._remove_handled(sftp, in_hand, ALL_COMPLETED)

    def _remove_handled(
        self, sftp: SftpPartner, in_hand: dict[Future[None], str], until: str
    ) -> None:
        """Wait for handlings in `in_hand` (the first or all); remove each file handled well.

        Each failure is logged; the first is raised after the others' files are removed.
        """
        done, _ = wait(in_hand, return_when=until)
        failures = []
        for job in done:
            name = in_hand.pop(job)
            if (failure := job.exception()) is None:
                sftp.remove_download(name)
            else:
                log.error("%s: not handled, left on the server: %s", name, failure,
                          exc_info=None if isinstance(failure, GatewayError) else failure)  # fmt: skip
                failures.append(failure)
        if failures:
            raise failures[0]

    def send_receipts(self, partner: Partner, sftp: SftpPartner) -> None:
        """Upload every receipt we owe this partner, recording them sent in one commit.

        A crash before the commit leaves them due: the next poll finds each already on the
        server with the same SHA-256 and records it then.
        """
        sent = []
        try:
            for package in self.ledger.receipts_due(partner.id):
                path = self.inbound.receipt_file(package.package_id)
                name = receipt_name(package.package_id)
                sent.append((package.package_id, sftp.put_atomic(path, name, sha256_file(path))))
        finally:
            with self.ledger.transaction():
                for pid, uploaded in sent:
                    self.ledger.note(
                        pid, "receipt.sent", {"path": uploaded.path}, receipt_state="sent"
                    )
