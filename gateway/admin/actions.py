"""Operator actions on one package: retry it now, or cancel it. Each is audited with its reason."""

from __future__ import annotations

import shutil

from gateway.adapters.files import fsync_dir
from gateway.app.gateway import Gateway
from gateway.core.errors import IllegalTransition, UsageError
from gateway.core.lifecycle import CANCELLABLE, RELEASABLE, RESCHEDULABLE, State
from gateway.core.model import Package


def reason_given(reason: str) -> str:
    """The operator's reason, stripped; refused when it says nothing."""
    if not reason.strip():
        raise UsageError("--reason must say why: it goes in the audit trail")
    return reason.strip()


def retry(gw: Gateway, package_id: str, reason: str) -> Package:
    """Release a held or failed package, or make a waiting one due now."""
    package = gw.ledger.package(package_id)
    detail = {"reason": reason_given(reason), "was": package.state}
    if package.state in RELEASABLE:
        sealed = package.ciphertext_sha256 is not None and gw.home.sealed_file(package_id).exists()
        target = State.SEALED if sealed else State.RECEIVED
        return gw.ledger.transition(
            package_id, target, "retry", detail, failures=0, next_attempt_at=None, last_error=None,
            retry_from=gw.clock.now(),
        )  # fmt: skip
    if package.state in RESCHEDULABLE:
        return gw.ledger.note(
            package_id, "retry", detail, failures=0, next_attempt_at=None, last_error=None,
            retry_from=gw.clock.now(),
        )  # fmt: skip
    raise IllegalTransition(f"{package_id} is {package.state}: there is nothing to retry")


def cancel(gw: Gateway, package_id: str, reason: str) -> Package:
    """Cancel a package that has not reached its partner, and erase what the spool holds of it."""
    package = gw.ledger.package(package_id)
    if package.state not in CANCELLABLE:
        raise IllegalTransition(
            f"{package_id} is {package.state}: too late to cancel"
            + (
                " (the partner has it; ask them to disregard it)"
                if package.state is State.DELIVERED
                else ""
            )
        )
    cancelled = gw.ledger.transition(
        package_id, State.CANCELLED, "cancel", {"reason": reason_given(reason)}
    )
    erase_leftovers(gw, package, "cancelled")
    return cancelled


def erase_leftovers(gw: Gateway, package: Package, why: str) -> None:
    """Erase what the spool holds of an ended package (plaintext, sealed, published), audited."""
    package_id = package.package_id
    leftovers = {
        "plaintext payload": gw.home.work / package_id,
        "sealed package": gw.home.sealed_file(package_id),
        "published copy": gw.home.mailbox / str(package.partner) / "download" / f"{package_id}.pgp",
    }
    for what, path in leftovers.items():
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            fsync_dir(path.parent)
            gw.ledger.record(
                "erase",
                package_id=package_id,
                partner=package.partner,
                detail={"what": what, "reason": why},
            )
