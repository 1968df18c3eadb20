"""The arithmetic of `gateway report`: periods, groups, counts and percentiles."""

from __future__ import annotations

import pytest

from gateway.core.errors import UsageError
from gateway.core.lifecycle import State
from gateway.core.report import Entry, groups, nearest_rank, period, tally


def test_a_period_is_whole_utc_days_with_the_last_included() -> None:
    assert period("2026-11-01", "2026-11-30") == (
        "2026-11-01T00:00:00.000Z",
        "2026-12-01T00:00:00.000Z",
    )
    with pytest.raises(UsageError, match="before --from"):
        period("2026-11-02", "2026-11-01")
    with pytest.raises(UsageError, match="write each as a day"):
        period("2026-11", "2026-11-30")


def test_groups_are_checked() -> None:
    assert groups(None) == ()
    assert groups("month, partner") == ("month", "partner")
    for wrong in ("country", "partner,partner"):
        with pytest.raises(UsageError, match="at most once"):
            groups(wrong)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert nearest_rank(values, 95) == 95.0
    assert nearest_rank(values, 50) == 50.0
    assert nearest_rank([7.0], 95) == 7.0
    assert nearest_rank([1.0, 2.0, 3.0], 95) == 3.0


def out(pid: str, state: State, delivered: str | None = None, receipt: str | None = None,
        kind: str = "conviction") -> Entry:  # fmt: skip
    return Entry(pid, "out", state, "US-NCB", kind, "2026-11-02T10:00:00.000Z", delivered, receipt)


def test_times_to_receipt_count_only_packages_with_a_receipt() -> None:
    at = "2026-11-02T10:00:00.000Z"
    packages = [
        out("a", State.ACKNOWLEDGED, at, "2026-11-02T10:01:00.500Z"),
        out("b", State.REFUSED, at, "2026-11-02T11:00:00.000Z"),
        out("c", State.DELIVERED, at),  # no receipt yet
        out("d", State.CANCELLED, kind="request"),
    ]
    [conviction, request, total] = tally(packages, ("kind",))
    assert (conviction["kind"], request["kind"], total["kind"]) == ("conviction", "request", "all")
    assert (conviction["sent"], conviction["acknowledged"], conviction["refused"]) == (3, 1, 1)
    assert (request["sent"], request["cancelled"]) == (0, 1)
    assert conviction["median_seconds_to_receipt"] == 1830.25
    assert conviction["p95_seconds_to_receipt"] == 3600.0
    assert request["median_seconds_to_receipt"] is None
    assert total["sent"] == 3 and total["cancelled"] == 1
    [alone] = tally(packages, ())
    assert alone == {k: v for k, v in total.items() if k != "kind"}


def test_duties_count_when_met_by_their_last_day_and_when_late_now() -> None:
    def inbound(pid: str, duty: str | None, standing: str | None) -> Entry:
        return Entry(pid, "in", State.ACCEPTED, "US-NCB", "request", "2026-11-02T10:00:00.000Z",
                     None, None, "EUFRA-2020-s5", duty, standing)  # fmt: skip

    packages = [inbound("a", "answer", "met"), inbound("b", "answer", "met-late"),
                inbound("c", "answer", "late"), inbound("d", None, None),
                out("e", State.DELIVERED, "2026-11-02T10:00:00.000Z")._replace(duty="notify", standing="met")]  # fmt: skip
    [none, by_regime, total] = tally(packages, ("regime",))
    assert (by_regime["regime"], none["regime"]) == ("EUFRA-2020-s5", "(none)")
    assert (
        by_regime["answered_in_time"],
        by_regime["late_now"],
        by_regime["notified_in_time"],
    ) == (1, 1, 0)
    assert (total["answered_in_time"], total["notified_in_time"], total["late_now"]) == (1, 1, 1)
