"""Four-eyes: a second operator approves or rejects a package awaiting approval.

The package waits as `awaiting-approval` (nothing of it is sealed) until `approve` moves
it to `received`, for the daemon to seal and deliver, or `reject` ends it `cancelled`
and erases its plaintext. Either is refused to the person who sent or dropped it:

- sent with `gateway send`: the OS account that ran it (the intake event's actor);
- dropped in the spool: the account that owned the file when it was taken in (the
  intake event's `dropped_by`). That is all the spool can prove: a producer writing as
  the gateway's own account, and anyone who can become that account, look the same.
"""

from __future__ import annotations

from gateway.admin.actions import erase_leftovers, reason_given
from gateway.app.gateway import Gateway
from gateway.core.approval import check_second
from gateway.core.errors import IllegalTransition, LedgerDamaged
from gateway.core.lifecycle import AWAITING_DECISION, State
from gateway.core.model import Package


def submitter(gw: Gateway, package_id: str) -> str:
    """Who sent or dropped the package, from its intake event."""
    for event in gw.ledger.events(package_id):
        if event.action == "intake":
            return event.submitter()
    raise LedgerDamaged(f"{package_id} has no intake event: restore ledger.db from backup")


def _waiting(gw: Gateway, package_id: str, reason: str) -> tuple[Package, dict[str, str]]:
    """The package, if it awaits a decision that this operator may take, and the event detail."""
    package = gw.ledger.package(package_id)
    if package.state not in AWAITING_DECISION:
        raise IllegalTransition(f"{package_id} is {package.state}: it is not awaiting approval")
    why = reason_given(reason)
    sent_by = submitter(gw, package_id)
    check_second(package_id, sent_by, gw.ledger.actor)
    return package, {"reason": why, "sent_by": sent_by}


def approve(gw: Gateway, package_id: str, reason: str) -> Package:
    """Approve a package awaiting approval: it is sealed and delivered as any other."""
    _, detail = _waiting(gw, package_id, reason)
    return gw.ledger.transition(package_id, State.RECEIVED, "approve", detail,
                                retry_from=gw.clock.now())  # fmt: skip


def reject(gw: Gateway, package_id: str, reason: str) -> Package:
    """Reject a package awaiting approval: it ends `cancelled`, its plaintext erased."""
    package, detail = _waiting(gw, package_id, reason)
    cancelled = gw.ledger.transition(package_id, State.CANCELLED, "disapprove", detail)
    erase_leftovers(gw, package, "rejected by a second operator")
    return cancelled
