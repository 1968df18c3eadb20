"""The one error tree, and the exit code of each kind of error.

Every error the gateway raises on purpose is a `GatewayError`. The message raised is
written for the operator: what happened and what to do, in one line, never key material
or file contents. Each class's docstring says, for the operator, what the condition is
and what to do; its first paragraph is the class's row in the exit-code table of
`docs/cli.md`. Each class has a fixed `exit_code` in one of `EXIT_RANGES`, so a script
that runs `gateway` can tell one condition from another (borgbackup's model).

Foreign exceptions (OSError, paramiko, GnuPG, sqlite3) are translated into these at the
edge of the adapter that met them; the CLI turns them into one `error:` line and the
class's exit code in exactly one place (`gateway.cli`).

`Transient` errors mean "try again later": the package waits and is retried; their codes
are 50-59 and no others are. `Permanent` errors mean retrying cannot help: a package that
meets one is `held` until an operator acts (`gateway retry`). Neither ever quarantines a
package that was accepted.
"""

from __future__ import annotations

import inspect
from typing import Final, NamedTuple


class ExitRange(NamedTuple):
    """A range of exit codes and what the errors in it are about."""

    low: int
    high: int
    about: str


#: The exit codes, by range. `tests/core/test_errors.py` holds every class to its range.
EXIT_RANGES: Final = (
    ExitRange(1, 1, "general: an error with no code of its own, an OS error or an unexpected one"),
    ExitRange(2, 2, "usage: the command line is wrong (click's own usage errors exit 2 too)"),
    ExitRange(10, 19, "the home and its settings"),
    ExitRange(20, 29, "partners, keys and cryptography"),
    ExitRange(30, 39, "packages, the ledger and the spool"),
    ExitRange(40, 49, "input the gateway refused"),
    ExitRange(50, 59, "transient trouble: the work waits and is retried by itself"),
)
#: Where the codes of `Transient` errors lie, and only theirs.
TRANSIENT_CODES: Final = range(50, 60)


class GatewayError(Exception):
    """Something went wrong that has no code of its own: do what the `error:` line says;
    if it says to, rerun with `--debug` and report it.

    OS errors (a path, its permissions, a full disk) and unexpected errors exit 1 too.
    """

    exit_code = 1


class Permanent(GatewayError):
    """Retrying will not help: someone must act, as the `error:` line says.

    No code of its own: every error raised is of a subclass, each with its code.
    """


class Transient(GatewayError):
    """Temporary trouble: the work waits and is retried by itself; if it goes on, do what
    the `error:` line says."""

    exit_code = 50


# -- 2: usage ----------------------------------------------------------------------------


class UsageError(Permanent):
    """The command line is wrong: an option's value, or an id or a name that is not one.
    Correct the command; `gateway COMMAND --help` shows what it takes."""

    exit_code = 2


# -- 10-19: the home and its settings ----------------------------------------------------


class HomeError(Permanent):
    """The gateway home cannot be used as it is: do what the `error:` line says."""

    exit_code = 10


class HomeMissing(HomeError):
    """The folder is not a gateway home (it has no gateway.toml): run `gateway init --id ID`
    there, or pass --home or set GATEWAY_HOME to the home."""

    exit_code = 11


class HomeExists(HomeError):
    """`gateway init` found a gateway home already there; nothing was changed: use it, or
    choose another folder."""

    exit_code = 12


class HomeLocked(HomeError):
    """Another `gateway run` is already working on this home: stop it first, or leave the
    work to it; other commands can be used beside it."""

    exit_code = 13


class SettingsInvalid(HomeError):
    """gateway.toml is not valid (not TOML, an unknown setting, a value of the wrong type
    or range, no or a bad gateway.id): fix the setting the `error:` line names."""

    exit_code = 14


class RestoreRefused(HomeError):
    """`gateway restore` was pointed at a folder that is not empty; nothing was changed:
    restore into a new, empty folder (a home is never overwritten by a backup)."""

    exit_code = 15


class RegimesInvalid(HomeError):
    """A regimes file (the shipped one, or the home's regimes.toml) is not valid: an
    unknown field, a value of the wrong type, an id used twice or taken from the shipped
    file: fix the entry the `error:` line names."""

    exit_code = 17


class AgentUnavailable(HomeError):
    """No GnuPG agent answers for this home, and this command may not start one: a
    running daemon keeps the only agent (in its own sandbox), and a command run by
    another user than the home's owner never starts one. Run the command as the home's
    owner (sudo -u gateway gateway ...) while the daemon runs, or stop the daemon."""

    exit_code = 18


# -- 20-29: partners, keys and cryptography ----------------------------------------------


class PartnerError(Permanent):
    """A partner cannot be registered or changed as asked (already registered, the
    gateway's own id, not a push partner): see `gateway partner show ID`."""

    exit_code = 20


class UnknownPartner(PartnerError):
    """No partner is registered under that id: see `gateway partner list`, or register it
    with `gateway partner add`."""

    exit_code = 21


class PartnerDisabled(PartnerError):
    """The partner is disabled, so its packages wait as held: `gateway partner enable ID`
    when ready, then `gateway retry` them."""

    exit_code = 22


class KeyProblem(Permanent):
    """An OpenPGP or SSH key is wrong, expired, revoked, missing or not pinned; nothing was
    sealed or sent with it: renew or re-pin it, or ask the partner for a current key."""

    exit_code = 23


class HostKeyMismatch(Permanent):
    """A push partner's SSH server did not show the host key pinned for it, or none is
    pinned; nothing was sent: confirm the partner's key by phone before pinning a new one.

    The package is held, not dropped: the operator either finds the attacker or pins
    the partner's new key, then `gateway retry` carries on.
    """

    exit_code = 24


class CryptoFailed(Permanent):
    """GnuPG refused, or did not report what it must have done; nothing was sent: check
    `gpg --version` and the keyring, then `gateway retry`."""

    exit_code = 25


# -- 30-39: packages, the ledger and the spool -------------------------------------------


class NoSuchPackage(Permanent):
    """No package with that id is in the ledger: see `gateway ledger list`."""

    exit_code = 30


class IllegalTransition(Permanent):
    """The package's state does not allow what was asked (nothing to retry, too late to
    cancel, already recorded): see `gateway ledger show ID`."""

    exit_code = 31


class LedgerUnavailable(Permanent):
    """The ledger (ledger.db) cannot be opened: check its owner, its permissions and the
    free space of its disk."""

    exit_code = 32


class LedgerDamaged(Permanent):
    """The ledger lacks what the gateway wrote into it (its own key's record): restore
    ledger.db from backup."""

    exit_code = 33


class SpoolDamaged(Permanent):
    """Something in the gateway's own spool is not as the gateway left it (a payload gone
    or changed before it was sealed, a folder in spool/inbound that is another package's):
    do what the `error:` line says; check the host's disk and who can write to the spool."""

    exit_code = 34


class RemoteConflict(Permanent):
    """The partner already holds a different file under the package's name; nothing was
    overwritten: ask the partner to remove it, then `gateway retry`."""

    exit_code = 35


class BackupDamaged(Permanent):
    """A backup is not whole or not ours (a file missing, changed or not listed in its
    manifest, or no manifest); nothing was restored: take another backup, or check how
    this one was copied."""

    exit_code = 38


class SameOperator(Permanent):
    """Four-eyes: a package is approved or rejected by another operator than the one who
    sent or dropped it. Ask a second operator (their own OS account) to run the command."""

    exit_code = 37


# -- 40-49: input the gateway refused ----------------------------------------------------


class InputRefused(Permanent):
    """A file given to the gateway was refused (a link or not a regular file, empty, too
    large, badly named, or a manifest that breaks the contract): a spooled file is
    quarantined with the reason; fix the file as the reason says and send it again."""

    exit_code = 40


class Rejected(Permanent):
    """Something a partner sent failed a check: it is quarantined and answered, never used;
    the reason is in the ledger (`gateway ledger show ID`).

    `signer` is the partner's pinned key when its signature verified before the check
    failed: only then is the sender authenticated, and told why in a rejected receipt.
    """

    exit_code = 41

    def __init__(self, message: str, signer: str | None = None) -> None:
        super().__init__(message)
        self.signer = signer


class NoLegalBasis(InputRefused):
    """No regime is registered under which the partner may receive that kind of package,
    or not the one asked for; nothing was queued (a spooled file is quarantined): register
    one with `gateway partner set ID --regime KIND=REGIME --reason R`, or name another."""

    exit_code = 44


class Misrouted(InputRefused):
    """The package concerns a person of other nationalities than the partner's country
    (or the countries it is a channel for); nothing was queued (a spooled file is
    quarantined): send it to the right partner, or register the channel with
    `gateway partner set ID --channel-for CC --reason R` if it is one."""

    exit_code = 45


# -- 50-59: transient trouble ------------------------------------------------------------


class TransferFailed(Transient):
    """The connection to a partner failed or was cut: the package waits for a retry; if it
    goes on, check the network and `gateway doctor`."""

    exit_code = 51


class Timeout(Transient):
    """An external program or network step ran past its deadline and was stopped: it is
    tried again; raise the timeout setting the `error:` line names for very large files."""

    exit_code = 52


class LedgerBusy(Transient):
    """The ledger was busy or could not be written just now; nothing was recorded: try
    again, and check its disk if it goes on."""

    exit_code = 53


class HostTrouble(Transient):
    """This host could not finish a step just now (its disk full, GnuPG stopped, a file
    not read back whole): the work waits and is retried; free disk space if the line says."""

    exit_code = 54


def tree() -> list[type[GatewayError]]:
    """Every class of the tree defined here, by exit code, then parents before children."""
    found: list[type[GatewayError]] = []
    stack: list[type[GatewayError]] = [GatewayError]
    while stack:
        cls = stack.pop()
        if cls.__module__ == __name__:  # not a subclass some caller made for itself
            found.append(cls)
            stack.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: (c.exit_code, len(c.__mro__), c.__name__))


def meaning(cls: type[GatewayError]) -> str:
    """What a class's error means to the operator: its docstring's first paragraph."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())
