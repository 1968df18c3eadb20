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
import math
import os
import random
import threading
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Final

from gateway.adapters import quarantine
from gateway.adapters.files import sha256_file
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.backoff import backoff
from gateway.core.errors import GatewayError
from gateway.core.model import Arrival, Outgoing, Partner, Placed, Wanted, utc
from gateway.core.names import WIRE_NAME, is_temporary, new_package_id, receipt_name
from gateway.core.receipts import MAX_BYTES as MAX_RECEIPT_BYTES
from gateway.core.settings import Settings
from gateway.pipeline.accept import Accept
from gateway.pipeline.acknowledge import Acknowledge
from gateway.transports.base import Link

log = logging.getLogger("gateway")
#: Threads handling fetched files. Each package costs two gpg runs (open, and the receipt),
#: each waiting on its own process; one thread left a core idle.
HANDLERS: Final = 4
STRAY_REASON: Final = (
    "not a name of the contract: only <package_id>.pgp and <package_id>.receipt are taken in"
)


class Collector:
    """Takes in what one partner sent and answers it, over a link."""

    def __init__(self, home: Home, ledger: Ledger, accept: Accept, acknowledge: Acknowledge,
                 settings: Settings) -> None:  # fmt: skip
        self.home = home
        self.ledger = ledger
        self.accept = accept
        self.acknowledge = acknowledge
        self.settings = settings
        #: (partner, file name) -> (failed handlings, when to try again): a file whose
        #: handling failed waits, with backoff, and holds up no other file.
        self._failing: dict[tuple[str, str], tuple[int, float]] = {}
        self._lock = threading.Lock()

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

        This thread fetches (HANDLERS files at a time) and removes; HANDLERS threads handle
        (two gpg runs each for a package). A file is removed only once its handling has
        ended well, which commits its outcome. A file whose handling failed stays on the
        partner's side and waits (with backoff) while the others go on; a failure to fetch
        ends the collection, after the handlings in hand have finished.
        """
        folder = self.home.incoming / partner.id
        folder.mkdir(mode=0o700, exist_ok=True)
        with ThreadPoolExecutor(HANDLERS, thread_name_prefix=f"handle-{partner.id}") as pool:
            in_hand: dict[Future[None], Arrival] = {}
            try:
                wanted = self._wanted(partner, link, link.collect(), folder)
                self._quarantine_strays(partner, folder)
                for start in range(0, len(wanted), HANDLERS):
                    batch = wanted[start : start + HANDLERS]
                    for w, fetched in zip(batch, link.fetch(batch), strict=True):
                        if isinstance(fetched, GatewayError):
                            raise fetched
                        in_hand[pool.submit(self.handle, partner, fetched)] = w.arrival
                    if len(in_hand) >= 2 * HANDLERS:
                        self._remove_handled(partner, link, in_hand, FIRST_COMPLETED)
            except BaseException:
                with contextlib.suppress(Exception):  # the link's failure is the one to report
                    self._remove_handled(partner, link, in_hand, ALL_COMPLETED)
                raise
            self._remove_handled(partner, link, in_hand, ALL_COMPLETED)

    def _wanted(
        self, partner: Partner, link: Link, arrivals: list[Arrival], folder: Path
    ) -> list[Wanted]:
        """The arrivals due to be fetched now; one too large is refused instead."""
        wanted = []
        for arrival in arrivals:
            if not self._due(partner, arrival):
                continue
            limit = self.max_bytes(arrival.name)
            if arrival.size > limit:
                self._refuse(partner, link, arrival, limit)
                continue
            wanted.append(Wanted(arrival, folder / arrival.name, limit))
        return wanted

    def _quarantine_strays(self, partner: Partner, folder: Path) -> None:
        """Quarantine each finished file in `folder` whose name is not of the contract: a
        pull partner's upload that would otherwise lie in its mailbox for ever."""
        for name in sorted(os.listdir(folder)):
            path = folder / name
            if WIRE_NAME.fullmatch(name) or is_temporary(name) or not path.is_file():
                continue
            entry = new_package_id(self.settings.gateway_id, self.ledger.clock.now())
            original = os.fsencode(name).decode("utf-8", "backslashreplace")
            reason = STRAY_REASON
            quarantine.put(self.home.quarantine, path, entry, {
                "what_arrived": "a file of another name", "partner": partner.id,
                "original_name": original, "reason": reason, "at": utc(self.ledger.clock.now()),
                "what_to_do": "nothing was taken in; tell the partner which names the exchange uses",
            })  # fmt: skip
            self.ledger.record("upload.quarantined", partner=partner.id,
                               detail={"name": original, "reason": reason, "quarantine": entry})  # fmt: skip
            log.warning("%s from %s quarantined as %s: %s", original, partner.id, entry, reason)

    def _refuse(self, partner: Partner, link: Link, arrival: Arrival, limit: int) -> None:
        """Record a file too large to fetch, and remove it if the partner's side allows (a
        drop server lets a client remove only what it has read): else it is left alone,
        and looked at again only after a while."""
        self.ledger.record("fetch.refused", partner=partner.id,
                           detail={"name": arrival.name, "size": arrival.size, "reason": f"larger than {limit} bytes"})  # fmt: skip
        [failure] = link.remove([arrival])
        if failure is not None:
            log.warning("%s from %s: too large, and cannot be removed there: %s", arrival.name,
                        partner.id, failure)  # fmt: skip
            self._failed(partner, arrival)

    def _failed(self, partner: Partner, arrival: Arrival) -> float:
        """Note one more failure with `arrival`; the delay before it is looked at again."""
        key = (partner.id, arrival.name)
        with self._lock:
            failures = self._failing.get(key, (0, 0.0))[0] + 1
            delay = backoff(failures, self.settings.retry_first_delay_seconds,
                            self.settings.retry_max_delay_seconds, random.random())  # noqa: S311 - jitter  # fmt: skip
            self._failing[key] = (failures, self.ledger.clock.monotonic() + delay)
        return delay

    def _due(self, partner: Partner, arrival: Arrival) -> bool:
        with self._lock:
            _, when = self._failing.get((partner.id, arrival.name), (0, -math.inf))
        return self.ledger.clock.monotonic() >= when

    def _remove_handled(self, partner: Partner, link: Link, in_hand: dict[Future[None], Arrival],
                        until: str) -> None:  # fmt: skip
        """Wait for handlings in `in_hand` (the first or all); remove each file handled well;
        log each failure and let its file wait."""
        done, _ = wait(in_hand, return_when=until)
        handled = []
        for job in done:
            arrival = in_hand.pop(job)
            if (failure := job.exception()) is None:
                with self._lock:
                    self._failing.pop((partner.id, arrival.name), None)
                handled.append(arrival)
                continue
            delay = self._failed(partner, arrival)
            log.error("%s from %s: not handled, tried again in %.0f s: %s", arrival.name,
                      partner.id, delay, failure,
                      exc_info=None if isinstance(failure, GatewayError) else failure)  # fmt: skip
        for removal in link.remove(handled) if handled else []:
            if removal is not None:
                raise removal

    def answer(self, partner: Partner, link: Link) -> None:
        """Send every receipt the gateway owes this partner, recording them sent in one commit.

        One receipt that cannot be sent holds up no other; the first failure is raised
        once the rest were tried. A crash before the commit leaves them due: the next turn
        finds each already there with the same SHA-256 and records it then.
        """
        owed: list[tuple[str, Outgoing]] = []
        failures: list[tuple[str, Exception]] = []
        for package in self.ledger.receipts_due(partner.id):
            path = self.home.receipt_file(package.package_id)
            try:
                owed.append((package.package_id,
                             Outgoing(path, receipt_name(package.package_id), sha256_file(path))))  # fmt: skip
            except OSError as err:
                failures.append((package.package_id, err))
        outcomes = link.answer([receipt for _, receipt in owed]) if owed else []
        with self.ledger.transaction():
            for (pid, receipt), outcome in zip(owed, outcomes, strict=True):
                if isinstance(outcome, Placed):
                    self.ledger.note(pid, "receipt.sent",
                                     {"path": outcome.path, "sha256": receipt.sha256},
                                     receipt_state="sent")  # fmt: skip
                else:
                    failures.append((pid, outcome))
        for pid, failure in failures:
            log.warning("receipt of %s for %s not sent: %s", pid, partner.id, failure)
        if failures:
            raise failures[0][1]
