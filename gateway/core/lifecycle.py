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
    AWAITING_APPROVAL = "awaiting-approval"
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
    "out": frozenset({S.AWAITING_APPROVAL, S.RECEIVED, S.REJECTED}),
    "in": frozenset({S.FETCHED, S.REJECTED}),
}

#: state -> the states it may move to. Nothing else is allowed.
TRANSITIONS: Final[dict[State, frozenset[State]]] = {
    S.AWAITING_APPROVAL: frozenset({S.RECEIVED, S.CANCELLED}),
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

FINAL: Final = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

# What the states mean to the rest of the gateway. Every set of states that a rule
# needs is named here, beside the table, and nowhere else.

#: Outbound states the daemon's own work moves on: sealed when received, delivered or
#: published when sealed. Each waits for its `next_attempt_at`. Never `awaiting-approval`:
#: nothing is sealed before a second operator approves it (`gateway approve`).
DUE_TO_SEAL: Final = frozenset({S.RECEIVED})
#: Waiting for a second operator: `gateway approve` moves it to `received`, `gateway
#: reject` ends it `cancelled`.
AWAITING_DECISION: Final = frozenset({S.AWAITING_APPROVAL})
DUE_TO_DELIVER: Final = frozenset({S.SEALED})
#: Out of the daemon's hands until an operator acts (`gateway retry` releases them).
RELEASABLE: Final = frozenset({S.HELD, S.FAILED})
#: Waiting for the daemon: `gateway retry` makes them due now.
RESCHEDULABLE: Final = DUE_TO_SEAL | DUE_TO_DELIVER
#: Not yet in the partner's hands: `gateway cancel` may stop them.
CANCELLABLE: Final = frozenset(
    {S.AWAITING_APPROVAL, S.RECEIVED, S.SEALED, S.PUBLISHED, S.HELD, S.FAILED}
)
#: The backlog: taken in, not yet in the partner's hands, and not stopped for an operator.
BACKLOG: Final = frozenset({S.RECEIVED, S.SEALED, S.PUBLISHED})
#: A receipt from the partner may close a package in these (sealed: the upload landed,
#: then the gateway stopped before recording it).
AWAITING_RECEIPT: Final = frozenset({S.SEALED, S.PUBLISHED, S.DELIVERED})
#: What the partner's receipt said, once it came.
RECEIPTED: Final = frozenset({S.ACKNOWLEDGED, S.REFUSED})
#: An outbound package in these may still have its plaintext in the spool: it was not
#: sealed yet (or not approved yet), or it was set aside before sealing. In any other
#: state, a plaintext left behind by a crash is erased at the next start.
MAY_HOLD_PLAINTEXT: Final = frozenset({S.AWAITING_APPROVAL, S.RECEIVED, S.HELD, S.FAILED})

#: The columns of `gateway status`: column -> the states counted in it ("overdue" is
#: `delivered` past `receipts.overdue_after_seconds`, counted by the ledger).
STATUS_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "awaiting_approval": (S.AWAITING_APPROVAL,),
    "queued": (S.RECEIVED,),
    "in_flight": (S.SEALED, S.PUBLISHED),
    "awaiting_receipt": (S.DELIVERED,),
    "overdue": ("overdue",),
    "held": (S.HELD,),
    "failed": (S.FAILED,),
    "acknowledged": (S.ACKNOWLEDGED,),
    "refused": (S.REFUSED,),
    "rejected": (S.REJECTED,),
}

#: DPA 2018 s.62: the category of each action of the audit trail that is one of the
#: processing operations the Act names. Actions not listed (retries, checkpoints,
#: partner changes) are not processing of personal data.
CATEGORY: Final = {
    "intake": "collection",  # a package taken in from the upstream system
    "quarantine": "collection",  # bad input kept aside, with its reason
    "fetch": "collection",  # a partner's package fetched, not yet opened
    "accept": "collection",  # ... opened, verified and delivered to spool/inbound
    "reject": "collection",  # ... refused and kept in quarantine
    "publish": "disclosure",  # placed where a pull partner can read it
    "deliver": "disclosure",  # in the partner's hands
    "erase": "erasure",
    "audit.export": "consultation",
    "audit.show": "consultation",  # one package's record read by an operator
    # The second operator reviewed the package's record to decide on its disclosure;
    # the disclosure itself is `deliver`.
    "approve": "consultation",
    "disapprove": "consultation",
}


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
