"""Retry and hold: what happens to a package after trouble (research: pitfalls X3, G5).

Transient trouble (network, partner down, timeout, disk full) schedules another attempt
with exponential backoff and jitter, until `retry.give_up_after_seconds` have passed
since the package was taken in; then it is `failed`. Permanent trouble (host key
mismatch, expired key, remote conflict, disabled partner) holds the package for an
operator. Nothing accepted is ever quarantined or dropped for either.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

from gateway.adapters.ledger import Ledger
from gateway.core.backoff import backoff
from gateway.core.errors import GatewayError, Transient
from gateway.core.lifecycle import State
from gateway.core.model import Package
from gateway.core.settings import Settings


class Setback:
    """Sets packages back after trouble, by the rules above."""

    def __init__(
        self, ledger: Ledger, settings: Settings, rand: Callable[[], float] = random.random
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.rand = rand

    def all(self, packages: list[Package], err: GatewayError) -> None:
        """Set back every package of a batch for the same reason."""
        for package in packages:
            self.one(self.ledger.package(package.package_id), err)

    def one(self, package: Package, err: GatewayError) -> None:
        """Schedule a retry after transient trouble, fail it past the deadline, or hold it."""
        now = self.ledger.clock.now()
        started = package.retry_from or datetime.fromisoformat(package.created_at).timestamp()
        age = now - started
        if not isinstance(err, Transient):
            self.ledger.transition(
                package.package_id,
                State.HELD,
                "hold",
                {"error": str(err)},
                last_error=str(err),
                next_attempt_at=None,
            )
        elif age >= self.settings.retry_give_up_after_seconds:
            self.ledger.transition(
                package.package_id,
                State.FAILED,
                "give-up",
                {"error": str(err)},
                last_error=str(err),
                next_attempt_at=None,
            )
        else:
            failures = package.failures + 1
            delay = backoff(
                failures,
                self.settings.retry_first_delay_seconds,
                self.settings.retry_max_delay_seconds,
                self.rand(),
            )
            self.ledger.note(
                package.package_id,
                "retry.scheduled",
                {"error": str(err), "delay_seconds": round(delay, 1)},
                failures=failures,
                last_error=str(err),
                next_attempt_at=now + delay,
            )
