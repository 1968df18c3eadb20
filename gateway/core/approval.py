"""Four-eyes: which packages wait for a second operator, and who may be that operator.

A partner may name the kinds whose packages need a second approval before they are
sealed (`partner add` or `partner set`, `--needs-approval`). Who is "another
operator" is decided on the OS accounts the gateway records as actors (see
`gateway.app.gateway.actor`): the person behind `name (sudo by person)` is `person`.
"""

from __future__ import annotations

import re
from typing import Final

from gateway.core.errors import SameOperator, UsageError
from gateway.core.names import KINDS

#: Every kind of a partner needs approval.
ALL: Final = "all"
_SUDO: Final = re.compile(r"^(?P<account>.+) \(sudo by (?P<person>.+)\)$")


def parse_kinds(values: tuple[str, ...] | list[str]) -> str | None:
    """The partner's `approval` column from `--needs-approval` values: kinds, or `all`."""
    wanted = {v.strip() for value in values for v in value.split(",") if v.strip()}
    if not wanted:
        return None
    if ALL in wanted:
        return ALL
    unknown = sorted(wanted - set(KINDS))
    if unknown:
        raise UsageError(
            f"--needs-approval {', '.join(unknown)}: not a kind; give one of "
            f"{', '.join(KINDS)}, or {ALL}"
        )
    return ",".join(k for k in KINDS if k in wanted)


def needs_approval(approval: str | None, kind: str) -> bool:
    """Whether a package of `kind` for a partner with this `approval` column waits for approval."""
    if not approval:
        return False
    return approval == ALL or kind in approval.split(",")


def person(actor: str) -> str:
    """The person an actor string names: the sudo user for `account (sudo by user)`."""
    match = _SUDO.match(actor)
    return match["person"] if match else actor


def check_second(package_id: str, submitter: str, approver: str) -> None:
    """Refuse a decision by the same person who sent or dropped the package."""
    if person(submitter) == person(approver):
        raise SameOperator(
            f"{package_id} was sent by {submitter}; {approver} cannot approve or reject it: "
            "a second operator, on their own OS account, must decide"
        )
