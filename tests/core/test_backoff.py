"""The retry delay: exponential from `first`, capped at `cap`, jittered into [step/2, step]."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.backoff import backoff

PROPERTY = settings(max_examples=200, deadline=None, database=None)

#: Up to 1000: the counts below 2**10 that the plain float formula handles; more below.
attempts = st.integers(min_value=1, max_value=1_000)
many_attempts = st.integers(min_value=1_000, max_value=10**6)
firsts = st.floats(min_value=0.001, max_value=10_000)
caps = st.floats(min_value=0.001, max_value=10**7)
rands = st.floats(min_value=0, max_value=1, exclude_max=True)


def step(attempt: int, first: float, cap: float) -> float:
    """min(cap, first * 2**(attempt-1)), computed exactly so that it cannot overflow."""
    return float(min(Fraction(cap), Fraction(first) * 2 ** (attempt - 1)))


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 15.0),  # half of the first step
        (1, 0.5, 22.5),
        (2, 0.0, 30.0),
        (3, 0.0, 60.0),
        (7, 0.0, 960.0),
        (8, 0.0, 1800.0),  # 30 * 2**7 = 3840, capped at 3600
        (8, 0.5, 2700.0),
        (20, 0.0, 1800.0),
    ],
)
def test_backoff_with_the_default_settings(attempt: int, rand: float, expected: float) -> None:
    assert backoff(attempt, 30, 3600, rand) == expected


def test_backoff_approaches_the_full_step_as_rand_approaches_one() -> None:
    just_below_one = 1 - 2**-53
    assert 3600 * (1 - 2**-50) < backoff(20, 30, 3600, just_below_one) <= 3600


@PROPERTY
@given(attempts, firsts, caps, rands)
def test_backoff_lies_between_half_the_step_and_the_step(
    attempt: int, first: float, cap: float, rand: float
) -> None:
    full = step(attempt, first, cap)
    assert full / 2 <= backoff(attempt, first, cap, rand) <= full


@PROPERTY
@given(attempts, firsts, caps, rands)
def test_backoff_never_exceeds_the_cap(attempt: int, first: float, cap: float, rand: float) -> None:
    assert backoff(attempt, first, cap, rand) <= cap


@PROPERTY
@given(attempts, attempts, firsts, caps, rands)
def test_backoff_never_shrinks_as_attempts_grow(
    a: int, b: int, first: float, cap: float, rand: float
) -> None:
    low, high = sorted((a, b))
    assert backoff(low, first, cap, rand) <= backoff(high, first, cap, rand)


@PROPERTY
@given(attempts, firsts, caps, rands, rands)
def test_backoff_grows_with_rand(
    attempt: int, first: float, cap: float, r1: float, r2: float
) -> None:
    low, high = sorted((r1, r2))
    assert backoff(attempt, first, cap, low) <= backoff(attempt, first, cap, high)


@PROPERTY
@given(many_attempts, firsts, caps, rands)
def test_backoff_after_very_many_attempts_stays_within_the_cap(
    attempt: int, first: float, cap: float, rand: float
) -> None:
    """retry.max_delay_seconds = 60 with the default 3-day give-up means ~5,000 attempts."""
    assert cap / 2 <= backoff(attempt, first, cap, rand) <= cap


@pytest.mark.parametrize("attempt", [1_024, 1_025, 2_000, 10**6])
def test_backoff_after_very_many_attempts_with_default_settings(attempt: int) -> None:
    assert backoff(attempt, 30, 3600, 0.0) == 1800.0
