"""How long to wait before trying again (research/library-pitfalls.md X3)."""

from __future__ import annotations


def backoff(attempts: int, first: float, cap: float, rand: float) -> float:
    """Delay before retry number `attempts` (1-based): exponential, capped, with full jitter.

    `rand` in [0, 1) spreads retries of many packages so a partner that comes back is
    not hit by all of them at once; the delay is never below half the exponential step.
    """
    step = min(cap, first * 2.0 ** min(max(0, attempts - 1), 64))  # 2**64: past any cap
    return step * (0.5 + rand / 2)
