"""What is due, and when: the one schedule of `gateway run` and `gateway run --once`.

The daemon asks `due()` each time it wakes and hands the steps to its workers;
`run --once` is `drain()`: the same steps, one after another, until none is due. Due
means: a received package whose next attempt has come is sealed; a partner with sealed
packages whose next attempt has come, or whose poll has come, gets a turn. Partners'
turns go first, so deliveries overlap sealing instead of waiting behind a thousand
seals, and each look reads a few rows, not every pending package (reading all of a
thousand pending packages on every wake-up made the daemon's main loop quadratic).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Final

from gateway.adapters.ledger import Ledger
from gateway.core.backoff import backoff
from gateway.core.clock import Clock
from gateway.core.lifecycle import DUE_TO_DELIVER, DUE_TO_SEAL
from gateway.core.model import Package, Partner
from gateway.core.settings import Settings
from gateway.pipeline.steps import Steps
from gateway.transports.base import Transport

log = logging.getLogger("gateway")
#: Sealed packages handed to one partner's turn; the next turn takes the rest.
ROUND_PACKAGES: Final = 256
#: While seals are in flight, a partner's turn waits until this many of its packages are
#: sealed, or the oldest has waited GATHER_SECONDS: a burst then goes up TOGETHER at a time
#: (gateway/adapters/sftp.py) instead of in turns of one or two. A lone package never waits.
GATHER: Final = 16
GATHER_SECONDS: Final = 0.25
#: How long `run --once` lets files still being written settle, in settle periods.
ONCE_SETTLE_PERIODS: Final = 10

Job = tuple[str, Callable[[], None]]


class Scheduler:
    """Says which steps are due; with `once`, each package and each poll only once."""

    def __init__(self, steps: Steps, ledger: Ledger, settings: Settings, clock: Clock,
                 transport: Callable[[Partner], Transport], once: bool = False) -> None:  # fmt: skip
        self.steps = steps
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        self.transport = transport
        self.once = once
        self.next_poll: dict[str, float] = {}
        self.handed: set[tuple[str, str]] = set()  # with `once`: (step, package id) handed out
        self.failures: dict[str, int] = {}  # partner id: turns in a row that failed unforeseen
        self.resume_at: dict[str, float] = {}  # partner id: no turn before this (monotonic)
        self._lock = threading.Lock()  # turns run on the daemon's workers

    def due(self, busy: Collection[str], room: int) -> list[Job]:
        """The steps due now that nobody is working on: every partner's turn, and up to
        `room` seals. A job's key (`partner:<ID>` or a package id) says what it works on."""
        jobs: list[Job] = []
        now, tick = self.clock.now(), self.clock.monotonic()
        sealing = any(not key.startswith("partner:") for key in busy)
        for partner in self.ledger.partners():
            key = f"partner:{partner.id}"
            with self._lock:
                resting = tick < self.resume_at.get(partner.id, -math.inf)
            if key in busy or resting:
                continue
            poll = tick >= self.next_poll.get(partner.id, -math.inf)
            if sealing and not poll and self._gathering(partner.id, now):
                continue
            packages = self._sealed(partner.id, now, ROUND_PACKAGES)
            if not (packages or poll):
                continue
            if poll:
                every = self.transport(partner).poll_seconds(self.settings)
                self.next_poll[partner.id] = math.inf if self.once else tick + every
            self._hand("deliver", [p.package_id for p in packages])
            jobs.append((key, functools.partial(self._turn, partner, packages, poll)))
        if room > 0:
            due = self.ledger.due(DUE_TO_SEAL, now, limit=len(self.handed) + room, skip=busy)
            fresh = [p for p in due if ("seal", p.package_id) not in self.handed]
            for package in fresh[:room]:
                self._hand("seal", [package.package_id])
                jobs.append((package.package_id, functools.partial(self.steps.seal, package)))
        return jobs

    def _gathering(self, partner_id: str, now: float) -> bool:
        """Whether a turn for the partner's sealed packages should wait for more (see
        GATHER): none yet, or fewer than GATHER and the oldest sealed just now."""
        count, oldest = self.ledger.due_count(DUE_TO_DELIVER, now, partner_id, GATHER)
        if oldest is None:
            return True
        return count < GATHER and now - datetime.fromisoformat(oldest).timestamp() < GATHER_SECONDS

    def _sealed(self, partner_id: str, now: float, limit: int) -> list[Package]:
        """Up to `limit` of the partner's packages due to be delivered, not yet handed out."""
        due = self.ledger.due(DUE_TO_DELIVER, now, partner_id, limit=limit + len(self.handed))
        return [p for p in due if ("deliver", p.package_id) not in self.handed][:limit]

    def _turn(self, partner: Partner, packages: list[Package], poll: bool) -> None:
        """A partner's turn, as a bulkhead: an error nobody foresaw in it is logged once and
        backs off that partner (`run --once` goes on to the next); no other partner's turn
        waits or stops for it."""
        try:
            self.steps.turn(partner, packages, poll)
        except Exception:
            with self._lock:
                failures = self.failures.get(partner.id, 0) + 1
                self.failures[partner.id] = failures
                delay = backoff(failures, self.settings.retry_first_delay_seconds,
                                self.settings.retry_max_delay_seconds, random.random())  # noqa: S311 - jitter  # fmt: skip
                self.resume_at[partner.id] = self.clock.monotonic() + delay
            log.exception(
                "turn of %s: unexpected error; its next turn in %.0f s", partner.id, delay
            )
        else:
            with self._lock:
                self.failures.pop(partner.id, None)
                self.resume_at.pop(partner.id, None)

    def _hand(self, step: str, ids: Iterable[str]) -> None:
        if self.once:
            self.handed.update((step, pid) for pid in ids)

    def drain(self) -> None:
        """`run --once`: finish what a crash interrupted, take in everything waiting (letting
        files still being written settle), then run every due step until none is."""
        self.steps.recover()
        settle = self.settings.daemon_settle_seconds
        deadline = self.clock.monotonic() + ONCE_SETTLE_PERIODS * max(1, settle)
        while self.steps.take_in() and self.clock.monotonic() < deadline:
            self.clock.sleep(0.2)
        while jobs := self.due(busy=(), room=ROUND_PACKAGES):
            for _, job in jobs:
                job()
