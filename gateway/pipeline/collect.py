"""What partners send, and what the gateway owes them: fetch, handle, remove; answer.

Over one link of any transport: each file the partner left (`<package_id>.pgp`, a
package of its own; `<package_id>.receipt`, its receipt for one of ours) is fetched into
`spool/incoming/<PARTNER>/`, handled (`Accept`, `Acknowledge`) a few at a time, and
removed on the partner's side only after its outcome is committed in the ledger, so a
cut connection or a crash fetches it again, and the ledger's memory of package ids makes
that harmless. Then every receipt the gateway owes the partner goes back over the link.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Final

from gateway.adapters.files import sha256_file
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.errors import GatewayError
from gateway.core.model import Arrival, Partner
from gateway.core.names import WIRE_NAME, receipt_name
from gateway.core.receipts import MAX_BYTES as MAX_RECEIPT_BYTES
from gateway.pipeline.accept import Accept
from gateway.pipeline.acknowledge import Acknowledge
from gateway.transports.base import Link

log = logging.getLogger("gateway")
#: Threads handling fetched files. Each package costs two gpg runs (open, and the receipt),
#: each waiting on its own process; one thread left a core idle.
HANDLERS: Final = 4


class Collector:
    """Takes in what one partner sent and answers it, over a link."""

    def __init__(
        self, home: Home, ledger: Ledger, accept: Accept, acknowledge: Acknowledge
    ) -> None:
        self.home = home
        self.ledger = ledger
        self.accept = accept
        self.acknowledge = acknowledge

    def max_bytes(self, name: str) -> int:
        """The largest file of this name that is fetched at all."""
        if name.endswith(".receipt"):
            return MAX_RECEIPT_BYTES * 4  # armored, signed and encrypted around the JSON
        return self.accept.max_bytes()

    def handle(self, partner: Partner, path: Path) -> None:
        """Handle one file in the spool named `<pid>.pgp` or `<pid>.receipt`; its outcome is
        in the ledger after."""
        match = WIRE_NAME.fullmatch(path.name)
        assert match is not None, "only names of the contract are collected"
        if match["suffix"] == ".receipt":
            self.acknowledge.receipt(partner, path, match["pid"])
        else:
            self.accept.package(partner, path, match["pid"])

    def collect(self, partner: Partner, link: Link) -> None:
        """Fetch, handle and remove each file the partner left, up to the link's bound.

        This thread fetches and removes; HANDLERS threads handle (two gpg runs each for a
        package). A file is removed only once its handling has ended, which commits its
        outcome. Once a handling fails, no more are fetched; the ones in hand are finished.
        """
        folder = self.home.incoming / partner.id
        folder.mkdir(mode=0o700, exist_ok=True)
        with ThreadPoolExecutor(HANDLERS, thread_name_prefix=f"handle-{partner.id}") as pool:
            in_hand: dict[Future[None], Arrival] = {}
            try:
                for arrival in link.collect():
                    limit = self.max_bytes(arrival.name)
                    if arrival.size > limit:
                        self.ledger.record("fetch.refused", partner=partner.id,
                                           detail={"name": arrival.name, "size": arrival.size, "reason": f"larger than {limit} bytes"})  # fmt: skip
                        link.remove(arrival)
                        continue
                    local = folder / arrival.name
                    link.fetch(arrival, local, limit)
                    in_hand[pool.submit(self.handle, partner, local)] = arrival
                    if len(in_hand) >= 2 * HANDLERS:
                        self._remove_handled(link, in_hand, FIRST_COMPLETED)
            except BaseException:
                with contextlib.suppress(Exception):  # each failure is logged; this one goes on
                    self._remove_handled(link, in_hand, ALL_COMPLETED)
                raise
            self._remove_handled(link, in_hand, ALL_COMPLETED)

    def _remove_handled(self, link: Link, in_hand: dict[Future[None], Arrival], until: str) -> None:
        """Wait for handlings in `in_hand` (the first or all); remove each file handled well.

        Each failure is logged; the first is raised after the others' files are removed.
        """
        done, _ = wait(in_hand, return_when=until)
        failures = []
        for job in done:
            arrival = in_hand.pop(job)
            if (failure := job.exception()) is None:
                link.remove(arrival)
            else:
                log.error("%s: not handled, left for the next turn: %s", arrival.name, failure,
                          exc_info=None if isinstance(failure, GatewayError) else failure)  # fmt: skip
                failures.append(failure)
        if failures:
            raise failures[0]

    def answer(self, partner: Partner, link: Link) -> None:
        """Send every receipt the gateway owes this partner, recording them sent in one commit.

        A crash before the commit leaves them due: the next turn finds each already there
        with the same SHA-256 and records it then.
        """
        sent = []
        try:
            for package in self.ledger.receipts_due(partner.id):
                path = self.home.receipt_file(package.package_id)
                sha256 = sha256_file(path)
                placed = link.answer(path, receipt_name(package.package_id), sha256)
                sent.append((package.package_id, placed.path, sha256))
        finally:
            with self.ledger.transaction():
                for pid, where, sha256 in sent:
                    self.ledger.note(pid, "receipt.sent", {"path": where, "sha256": sha256},
                                     receipt_state="sent")  # fmt: skip
