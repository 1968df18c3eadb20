"""Health of a gateway home: key expiry, permissions, partners, disk, ledger (`doctor`, `status`).

Each finding is a small value with what is wrong and what to do, never a secret.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
from collections.abc import Iterator
from typing import Literal

from gateway.adapters.gpg import KeyInfo
from gateway.adapters.home import user_name
from gateway.app.gateway import Gateway
from gateway.core.errors import GatewayError
from gateway.core.model import Contact, Partner, utc

Level = Literal["ok", "warn", "fail"]
MIN_FREE_BYTES = 1024**3


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of `doctor`: how it stands, what was checked, and what to do."""

    level: Level
    what: str
    todo: str = ""

    def line(self) -> str:
        """The line an operator reads."""
        return f"{self.level:<4} {self.what}" + (f": {self.todo}" if self.todo else "")


def _key_findings(what: str, key: KeyInfo, now: float, warn_days: int) -> Iterator[Finding]:
    if problem := key.problem():
        yield Finding(
            "fail",
            f"{what} {key.fingerprint}: {problem}",
            "rotate it now; packages for it are held",
        )
        return
    for part, expires in (
        ("expires", key.expires),
        ("encryption subkey expires", key.encryption_expires),
    ):
        if expires and expires - now < warn_days * 86400:
            yield Finding(
                "warn", f"{what} {key.fingerprint} {part} {utc(expires)}", "rotate it before then"
            )
            return
    yield Finding("ok", f"{what} {key.fingerprint} valid")


def keys(gw: Gateway) -> Iterator[Finding]:
    """The gateway's own key and every partner's key, with expiry warnings."""
    now, days = gw.clock.now(), gw.settings.keys_warn_days
    yield from _key_findings("the gateway's own key", gw.own_key_info, now, days)
    for partner in gw.ledger.partners():
        if not partner.enabled:  # its key is used for nothing: its expiry is no warning
            continue
        try:
            key = gw.keyring.key(partner.openpgp_key)
        except GatewayError as err:
            yield Finding("fail", f"{partner.id}'s key: {err}")
            continue
        yield from _key_findings(f"{partner.id}'s key", key, now, days)


def owner(gw: Gateway) -> Iterator[Finding]:
    """The home belongs to the user running the command: gpg refuses a keyring of another
    user's, and files written by another user would lock the daemon out of them."""
    uid, home_uid = os.geteuid(), os.stat(gw.home.gnupg).st_uid
    if uid != home_uid:
        yield Finding(
            "fail",
            f"{gw.home.root} belongs to {user_name(home_uid)}, this command runs as {user_name(uid)}",
            f"run it as that user: sudo -u {user_name(home_uid)} gateway ...",
        )
    else:
        yield Finding("ok", f"{gw.home.root} belongs to {user_name(uid)}, who runs this")


def permissions(gw: Gateway) -> Iterator[Finding]:
    """Keys, ledger and spool for the gateway's user alone: each path's mode, and its owner
    the home's owner (a command once run as root left root's files the daemon could not
    write beside)."""
    home = gw.home
    owner = home.owner()
    audit = home.spool / "audit"
    for path, most in ((home.keys, 0o700), (home.gnupg, 0o700), (home.ssh, 0o700), (home.spool, 0o700),
                       (home.ssh_identity, 0o600), (home.host_key, 0o600), (home.ledger, 0o660)):  # fmt: skip
        try:
            info = os.stat(path)
        except FileNotFoundError:
            yield Finding("fail", f"{path} is missing", "restore it from backup")
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~most:
            yield Finding("fail", f"{path} has mode {mode:o}", f"chmod {most:o} {path}")
        elif info.st_uid != owner:
            yield _foreign(path, info.st_uid, owner)
        else:
            yield Finding("ok", f"{path} mode {mode:o}, owner {user_name(owner)}")
    secret_keys = home.gnupg / "private-keys-v1.d"
    extra = [home.settings, home.ledger.with_name("ledger.db-wal"), home.ledger.with_name("ledger.db-shm"),
             home.gnupg / "pubring.kbx", home.gnupg / "trustdb.gpg", secret_keys,
             *sorted(secret_keys.glob("*.key")), home.known_hosts, home.ssh_identity_pub,
             *sorted(p for p in home.spool.iterdir() if p.is_dir()),
             *sorted(audit.glob("*.checkpoint"))]  # fmt: skip
    foreign = []
    for path in extra:
        try:
            uid = os.stat(path).st_uid
        except FileNotFoundError:
            continue
        if uid != owner:
            foreign.append(_foreign(path, uid, owner))
    yield from foreign[:5]  # the first few: one `chown -R` fixes them all
    if not foreign:
        yield Finding(
            "ok",
            f"settings, ledger, keyring, spool folders and checkpoints owned by {user_name(owner)}",
        )


def _foreign(path: object, uid: int, owner: int) -> Finding:
    return Finding("fail", f"{path} is owned by {user_name(uid)}, not by {user_name(owner)} who owns the home",
                   f"chown -R {user_name(owner)} {path}")  # fmt: skip


def protection(gw: Gateway) -> Iterator[Finding]:
    """Whether the keys are protected by a passphrase, and whether the one given opens them."""
    if not gw.protected:
        yield Finding("warn", "the gateway's secret keys have no passphrase: a copy of keys/ "
                      "can sign as this office", "`gateway keys protect` (operator guide, section 8)")  # fmt: skip
        return
    try:
        gw.unlock()
    except GatewayError as err:
        yield Finding("fail", f"the keys are protected: {err}")
    else:
        yield Finding("ok", "the keys are protected, and the passphrase given opens them")


def disk(gw: Gateway) -> Iterator[Finding]:
    """Room in the spool for packages to be taken in and sealed."""
    free = shutil.disk_usage(gw.home.spool).free
    if free < MIN_FREE_BYTES:
        yield Finding(
            "fail",
            f"{free // 1024**2} MiB free for the spool",
            "free disk space: intake pauses when full",
        )
    else:
        yield Finding("ok", f"{free // 1024**3} GiB free for the spool")


def ledger(gw: Gateway) -> Iterator[Finding]:
    """The ledger file (SQLite's quick_check), then the audit trail's chain and checkpoints."""
    if damage := gw.ledger.quick_check():
        yield Finding("fail", f"ledger.db is damaged: SQLite's quick_check found {'; '.join(damage[:3])}",
                      "stop the daemon, keep the file aside, restore ledger.db from backup")  # fmt: skip
        return
    yield Finding("ok", "ledger.db passes SQLite's quick_check")
    verdict = gw.audit.verify()
    if verdict.problem:
        yield Finding(
            "fail",
            f"audit trail: {verdict.problem}",
            verdict.todo,
        )
    else:
        yield Finding(
            "ok", f"audit trail intact ({verdict.events} events, {verdict.checkpoints} checkpoints)"
        )


def contact(
    partner: Partner, record: Contact | None, stuck: bool = False
) -> dict[str, str | int | None]:
    """A partner's health from its record in the ledger, as `partner list`, `status`,
    `doctor` and `check` all report it: `disabled`, `down` (its last contact failed),
    `failing` (reached, but packages for it are held or failed: `stuck`), `ok` (reached)
    or `unknown` (never contacted yet)."""
    record = record or Contact(partner.id)
    status = "failing" if stuck and record.status != "down" else record.status
    return {
        "health": "disabled" if not partner.enabled else status,
        "last_ok": utc(record.last_ok) if record.last_ok else None,
        "last_failure": utc(record.last_failure) if record.last_failure else None,
        "last_error": record.last_error,
        "down_since": utc(record.down_since) if record.down_since else None,
        "failures_in_a_row": record.failures,
    }


def partners(gw: Gateway, connect: bool) -> Iterator[Finding]:
    """Each partner's health from its record; with `connect`, each push partner is first
    reached with its pinned host key (nothing is sent), and that contact recorded."""
    for partner in gw.ledger.partners():
        if not partner.enabled:
            yield Finding(
                "warn",
                f"{partner.id} is disabled",
                f"`gateway partner enable {partner.id}` when ready",
            )
            continue
        if partner.transport == "push" and connect:
            # Imported here, not above: `status` uses this module too, and the SFTP client's
            # paramiko took 0.13 s of its start-up (python -X importtime).
            from gateway.transports.push import endpoint

            try:
                with gw.sessions.session(endpoint(partner)):
                    pass
            except GatewayError as err:
                gw.ledger.contact(partner.id, str(err))
            else:
                gw.ledger.contact(partner.id, None)
        yield _contact_finding(partner, gw.ledger.contacts().get(partner.id))


def _contact_finding(partner: Partner, record: Contact | None) -> Finding:
    h = contact(partner, record)
    if h["health"] == "down":
        return Finding("fail", f"{partner.id} cannot be reached since {h['down_since']} "
                       f"({h['failures_in_a_row']} failed contacts): {h['last_error']}",
                       "check the partner's server and the network; packages wait meanwhile")  # fmt: skip
    if h["health"] == "unknown":
        return Finding("warn", f"{partner.id} has not been in contact yet",
                       "`gateway doctor` (without --offline) tries it now")  # fmt: skip
    if partner.transport == "push":
        return Finding("ok", f"{partner.id} reachable at {partner.host}:{partner.port}, "
                       f"host key as pinned, last contact {h['last_ok']}")  # fmt: skip
    return Finding("ok", f"{partner.id} last in contact {h['last_ok']}")


def packages(gw: Gateway) -> Iterator[Finding]:
    """Packages that need an operator: held, failed, and overdue receipts."""
    now = gw.clock.now()
    counts = gw.ledger.counts(utc(now - gw.settings.receipts_overdue_after_seconds))
    checks: tuple[tuple[str, Level, str], ...] = (
        ("held", "fail", "see `gateway ledger list --state held`; fix the cause, then `gateway retry`"),
        ("failed", "fail", "see `gateway ledger list --state failed`; `gateway retry` or cancel"),
        ("overdue", "warn", "no receipt in time: ask the partner whether the packages arrived"),
    )  # fmt: skip
    for state, level, todo in checks:
        n = sum(v for (_, s), v in counts.items() if s == state)
        yield (
            Finding(level, f"{n} package(s) {state}", todo)
            if n
            else Finding("ok", f"no package {state}")
        )
