"""The system's clock, for the composition root to hand down."""

from __future__ import annotations

import time


class SystemClock:
    """`gateway.core.clock.Clock` read from the operating system."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Wait."""
        time.sleep(seconds)
