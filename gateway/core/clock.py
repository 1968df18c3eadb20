"""The one clock: every reading of time goes through a `Clock`.

The composition root builds one (`gateway.adapters.clock.SystemClock`) and hands it to
everything that reads time: the ledger's timestamps, due retries, key expiry, the
daemon's schedule, package ids. Tests hand in a clock they move instead of sleeping.
"""

from __future__ import annotations

from typing import Protocol


class Clock(Protocol):
    """Wall time for records and expiry, monotonic time for intervals."""

    def now(self) -> float:
        """Seconds since the epoch: what the ledger records and keys expire by."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: deadlines and intervals."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait this long (a test clock moves instead)."""
        ...
