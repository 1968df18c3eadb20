"""The one error tree.

Every error the gateway raises on purpose is a `GatewayError`. Its message is written
for the operator: what happened and what to do, in one line, never key material or file
contents. Foreign exceptions (OSError, paramiko, GnuPG, sqlite3) are translated into
these at the edge of the adapter that met them; the CLI turns them into one `error:`
line in exactly one place (`gateway.cli`).

`Transient` errors mean "try again later": the package waits and is retried.
`Permanent` errors mean retrying cannot help: a package that meets one is `held` until
an operator acts (`gateway retry`). Neither ever quarantines a package that was accepted.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Something went wrong; the message says what to do."""

    exit_code = 1


class Permanent(GatewayError):
    """Retrying will not help; someone must act."""


class Transient(GatewayError):
    """Temporary trouble (network, partner down, disk full): the work waits and is retried."""


class UsageError(Permanent):
    """The command was given something it cannot use."""


class HomeError(Permanent):
    """The gateway home is missing, incomplete or already exists."""


class PartnerError(Permanent):
    """A partner is unknown, misconfigured or cannot be registered as asked."""


class KeyProblem(Permanent):
    """An OpenPGP or SSH key is wrong, expired, revoked or not pinned."""


class IllegalTransition(Permanent):
    """A package was asked to move to a state the lifecycle does not allow."""


class NotFound(Permanent):
    """No such package or partner in the ledger."""


class CryptoFailed(Permanent):
    """GnuPG refused or did not say what it must; nothing was sent."""


class HostKeyMismatch(Permanent):
    """The partner's SSH server did not show its pinned host key; nothing was sent.

    The package is held, not dropped: the operator either finds the attacker or pins
    the partner's new key, then `gateway retry` carries on.
    """


class TransferFailed(Transient):
    """The connection to a partner failed or timed out; the package waits for a retry."""


class RemoteConflict(Permanent):
    """The partner already holds a different file under the package's name."""


class Timeout(Transient):
    """An external program or network step ran past its deadline and was stopped."""


class Rejected(Permanent):
    """Input from a partner failed a check; it is quarantined and answered, never used.

    `signer` is the partner's pinned key when its signature verified before the check
    failed: only then is the sender authenticated, and told why in a rejected receipt.
    """

    def __init__(self, message: str, signer: str | None = None) -> None:
        super().__init__(message)
        self.signer = signer
