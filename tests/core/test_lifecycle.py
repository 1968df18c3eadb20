"""The package lifecycle (SPEC section 6): the one transition table and its generated doc."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.core import lifecycle
from gateway.core.errors import IllegalTransition
from gateway.core.lifecycle import (
    AWAITING_DECISION,
    AWAITING_RECEIPT,
    CANCELLABLE,
    CATEGORY,
    DUE_TO_DELIVER,
    DUE_TO_SEAL,
    FINAL,
    INITIAL,
    MAY_HOLD_PLAINTEXT,
    RELEASABLE,
    RESCHEDULABLE,
    STATUS_COLUMNS,
    TRANSITIONS,
    State,
    check,
    check_initial,
)

S = State
ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run `python -m gateway.core.lifecycle > docs/lifecycle.md`"


def test_every_state_has_a_row_and_every_move_names_a_state() -> None:
    assert set(TRANSITIONS) == set(State)
    for nexts in TRANSITIONS.values():
        assert nexts <= set(State)


def test_states_are_those_of_the_spec() -> None:
    assert {s.value for s in State} == {
        "awaiting-approval",
        "received",
        "sealed",
        "published",
        "delivered",
        "acknowledged",
        "held",
        "failed",
        "refused",
        "cancelled",
        "fetched",
        "accepted",
        "rejected",
    }


def test_final_states_have_no_exits() -> None:
    assert {S.ACKNOWLEDGED, S.REFUSED, S.CANCELLED, S.ACCEPTED, S.REJECTED} == FINAL
    for state in FINAL:
        assert TRANSITIONS[state] == frozenset()
    for state in set(State) - FINAL:
        assert TRANSITIONS[state], f"{state} is not final but has no exit"


def test_no_state_moves_to_itself() -> None:
    for state, nexts in TRANSITIONS.items():
        assert state not in nexts


def test_check_allows_exactly_the_table() -> None:
    """Every one of the 144 (current, new) pairs: allowed iff the table lists it."""
    for current, new in itertools.product(State, State):
        if new in TRANSITIONS[current]:
            assert check(current, new) is new
        else:
            with pytest.raises(IllegalTransition, match=f"is {current} cannot become {new}"):
                check(current, new)


@pytest.mark.parametrize("current", sorted(FINAL))
def test_leaving_a_final_state_says_it_is_final(current: State) -> None:
    with pytest.raises(IllegalTransition, match="it is final"):
        check(current, S.RECEIVED)


def test_illegal_move_from_a_live_state_does_not_claim_it_is_final() -> None:
    with pytest.raises(IllegalTransition) as caught:
        check(S.RECEIVED, S.ACKNOWLEDGED)
    assert "final" not in str(caught.value)


@pytest.mark.parametrize(
    "path",
    [
        [S.RECEIVED, S.SEALED, S.DELIVERED, S.ACKNOWLEDGED],
        [S.RECEIVED, S.SEALED, S.PUBLISHED, S.DELIVERED, S.ACKNOWLEDGED],
        [S.RECEIVED, S.SEALED, S.DELIVERED, S.REFUSED],
        [S.RECEIVED, S.HELD, S.RECEIVED],
        [S.SEALED, S.HELD, S.SEALED],
        [S.SEALED, S.FAILED, S.SEALED],
        [S.PUBLISHED, S.HELD, S.CANCELLED],
        [S.FETCHED, S.ACCEPTED],
        [S.FETCHED, S.REJECTED],
    ],
    ids=lambda path: " -> ".join(path),
)
def test_the_spec_paths_are_allowed(path: list[State]) -> None:
    for current, new in itertools.pairwise(path):
        assert check(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.RECEIVED, S.DELIVERED),  # never delivered unsealed
        (S.RECEIVED, S.PUBLISHED),
        (S.DELIVERED, S.SEALED),  # never sent twice
        (S.ACKNOWLEDGED, S.RECEIVED),
        (S.CANCELLED, S.RECEIVED),
        (S.FETCHED, S.DELIVERED),  # inbound and outbound never mix
        (S.RECEIVED, S.ACCEPTED),
        (S.RECEIVED, S.REJECTED),  # accepted input is never quarantined
        (S.SEALED, S.REJECTED),
        (S.HELD, S.REJECTED),
    ],
)
def test_moves_the_spec_forbids_are_illegal(current: State, new: State) -> None:
    with pytest.raises(IllegalTransition):
        check(current, new)


def test_check_initial() -> None:
    for direction, allowed in (
        ("out", {S.AWAITING_APPROVAL, S.RECEIVED, S.REJECTED}),
        ("in", {S.FETCHED, S.REJECTED}),
    ):
        assert allowed == INITIAL[direction]
        for state in State:
            if state in allowed:
                assert check_initial(direction, state) is state
            else:
                with pytest.raises(
                    IllegalTransition, match=f"{direction}bound .* start as {state}"
                ):
                    check_initial(direction, state)


def test_every_state_is_reachable_from_a_start() -> None:
    seen = set(INITIAL["out"] | INITIAL["in"])
    frontier = list(seen)
    while frontier:
        for new in TRANSITIONS[frontier.pop()] - seen:
            seen.add(new)
            frontier.append(new)
    assert seen == set(State)


def test_every_live_state_can_reach_a_final_state() -> None:
    for start in set(State) - FINAL:
        seen, frontier = {start}, [start]
        while frontier:
            for new in TRANSITIONS[frontier.pop()] - seen:
                seen.add(new)
                frontier.append(new)
        assert seen & FINAL, f"{start} can never end"


def test_the_named_sets_follow_from_the_table() -> None:
    outbound = set(State) - {S.FETCHED, S.ACCEPTED}
    for named in (RELEASABLE, RESCHEDULABLE, CANCELLABLE, AWAITING_RECEIPT, MAY_HOLD_PLAINTEXT):
        assert named <= outbound
    # What an operator can still stop is exactly what can still end cancelled.
    assert {s for s in State if S.CANCELLED in TRANSITIONS[s]} == CANCELLABLE
    # A receipt closes a package by moving it (through delivered) to acknowledged or refused.
    for state in AWAITING_RECEIPT:
        assert state is S.DELIVERED or S.DELIVERED in TRANSITIONS[state]
    # `retry` of a held or failed package moves it back to the daemon's queue.
    for state in RELEASABLE:
        assert TRANSITIONS[state] >= {S.RECEIVED, S.SEALED}
    assert not RESCHEDULABLE & FINAL and not MAY_HOLD_PLAINTEXT & FINAL


def test_nothing_awaiting_approval_is_sealed_or_delivered() -> None:
    # Approval leads to `received` (then the daemon seals it), refusal to `cancelled`;
    # the daemon's own work never picks a package that waits for a second operator.
    assert TRANSITIONS[S.AWAITING_APPROVAL] == {S.RECEIVED, S.CANCELLED}
    assert not AWAITING_DECISION & (DUE_TO_SEAL | DUE_TO_DELIVER | RESCHEDULABLE | RELEASABLE)
    assert AWAITING_DECISION <= CANCELLABLE & MAY_HOLD_PLAINTEXT
    assert CATEGORY["approve"] == CATEGORY["disapprove"] == "consultation"


def test_status_columns_count_every_state_once() -> None:
    counted = [s for states in STATUS_COLUMNS.values() for s in states if s != "overdue"]
    assert sorted(counted) == sorted(set(counted))
    assert set(counted) == set(State) - {S.FETCHED, S.ACCEPTED, S.CANCELLED}


def test_categories_are_those_of_dpa_2018_s62() -> None:
    allowed = {"collection", "alteration", "consultation", "disclosure", "combination", "erasure"}
    assert set(CATEGORY.values()) <= allowed
    assert CATEGORY["deliver"] == CATEGORY["publish"] == "disclosure"


def test_diagram_draws_every_start_move_and_end() -> None:
    lines = set(lifecycle.diagram().splitlines())
    for direction, starts in INITIAL.items():
        for state in starts:
            assert f"    [*] --> {state}: {direction}" in lines
    for state, nexts in TRANSITIONS.items():
        for new in nexts:
            assert f"    {state} --> {new}" in lines
    for state in FINAL:
        assert f"    {state} --> [*]" in lines
    arrows = [line for line in lines if "-->" in line]
    expected = sum(len(s) for s in INITIAL.values()) + sum(map(len, TRANSITIONS.values()))
    assert len(arrows) == expected + len(FINAL)


def test_module_prints_the_document() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.core.lifecycle"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout == lifecycle.document()


def test_docs_lifecycle_md_is_generated_from_the_table() -> None:
    path = ROOT / "docs" / "lifecycle.md"
    if not path.exists():
        pytest.fail(f"docs/lifecycle.md is missing: {REGENERATE}")
    assert path.read_text(encoding="utf-8") == lifecycle.document(), (
        f"docs/lifecycle.md is out of date: {REGENERATE}"
    )
