"""The package lifecycle (SPEC section 6): every state and every allowed move, in one table.

`docs/lifecycle.md` is generated from `TRANSITIONS` (`python -m gateway.core.lifecycle`);
a test fails when the two disagree.
"""

from __future__ import annotations

import enum
import sys
from typing import Final

from gateway.core.errors import IllegalTransition


class State(enum.StrEnum):
    """A package's state in the ledger."""

    # outbound
    RECEIVED = "received"
    SEALED = "sealed"
    PUBLISHED = "published"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    HELD = "held"
    FAILED = "failed"
    REFUSED = "refused"
    CANCELLED = "cancelled"
    # inbound
    FETCHED = "fetched"
    ACCEPTED = "accepted"
    # both: bad input, quarantined
    REJECTED = "rejected"


S = State

#: The states a package may start in, by direction.
INITIAL: Final = {
    "out": frozenset({S.RECEIVED, S.REJECTED}),
    "in": frozenset({S.FETCHED, S.REJECTED}),
}

#: state -> the states it may move to. Nothing else is allowed.
TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    S.RECEIVED:     frozenset({S.SEALED, S.HELD, S.FAILED, S.CANCELLED}),
    S.SEALED:       frozenset({S.DELIVERED, S.PUBLISHED, S.HELD, S.FAILED, S.CANCELLED}),
    S.PUBLISHED:    frozenset({S.DELIVERED, S.HELD, S.CANCELLED}),
    S.DELIVERED:    frozenset({S.ACKNOWLEDGED, S.REFUSED}),
    S.HELD:         frozenset({S.RECEIVED, S.SEALED, S.CANCELLED}),
    S.FAILED:       frozenset({S.RECEIVED, S.SEALED, S.CANCELLED}),
    S.ACKNOWLEDGED: frozenset(),
    S.REFUSED:      frozenset(),
    S.CANCELLED:    frozenset(),
    S.FETCHED:      frozenset({S.ACCEPTED, S.REJECTED}),
    S.ACCEPTED:     frozenset(),
    S.REJECTED:     frozenset(),
}  # fmt: skip

#: States in which the gateway still has work to do for an outbound package.
PENDING: Final = frozenset({S.RECEIVED, S.SEALED, S.PUBLISHED})
FINAL: Final = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


def check(current: State, new: State) -> State:
    """Return `new` if a package in `current` may move there, else raise."""
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(
            f"a package that is {current} cannot become {new}"
            + (": it is final" if current in FINAL else "")
        )
    return new


def check_initial(direction: str, state: State) -> State:
    """Return `state` if a new package going `direction` may start in it."""
    if state not in INITIAL[direction]:
        raise IllegalTransition(f"an {direction}bound package cannot start as {state}")
    return state


def diagram() -> str:
    """The lifecycle as a Mermaid state diagram, generated from the table."""
    lines = ["```mermaid", "stateDiagram-v2"]
    for direction, starts in INITIAL.items():
        lines += [f"    [*] --> {s}: {direction}" for s in sorted(starts)]
    for state, nexts in TRANSITIONS.items():
        lines += [f"    {state} --> {n}" for n in sorted(nexts)]
        if not nexts:
            lines.append(f"    {state} --> [*]")
    lines.append("```")
    return "\n".join(lines) + "\n"


def document() -> str:
    """The text of docs/lifecycle.md."""
    return (
        "# Package lifecycle\n\n"
        "Generated from `gateway/core/lifecycle.py` by `python -m gateway.core.lifecycle`; "
        "do not edit by hand.\n\n" + diagram()
    )


if __name__ == "__main__":
    sys.stdout.write(document())
