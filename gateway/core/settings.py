"""Settings (SPEC section 8): one frozen value, checked here, read from `gateway.toml` by the home.

Every setting is declared once in `SETTINGS` with its default and its documentation;
`gateway init` writes that documentation into the new `gateway.toml`, and a test
fails if a setting is missing from docs or from the file written.

A running daemon reads gateway.toml again on SIGHUP (`systemctl reload gateway`): the
settings in `RESTART` are built into long-lived parts (the worker pool, the keyring, the
SFTP sessions, the drop server, the gateway's identity) and keep their value until the
next start; every other setting takes effect at once (`reloaded`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Final

from gateway.core.errors import SettingsInvalid, UsageError
from gateway.core.names import authority_id


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its dotted name, default and meaning."""

    name: str
    default: int | str
    doc: str


SETTINGS: Final = (
    Setting("gateway.id", "", "This gateway's own authority id, e.g. GB-ACRO. Set by `init`."),
    Setting(
        "daemon.settle_seconds",
        2,
        "A file written in place is taken once its size and mtime have been still this long.",
    ),
    Setting("daemon.poll_seconds", 30, "How often each push partner's download folder is polled."),
    Setting(
        "daemon.scan_seconds",
        60,
        "How often the outbound folders are scanned in full, to catch any missed event.",
    ),
    Setting("daemon.workers", 4, "How many packages are sealed and delivered at once."),
    Setting(
        "daemon.max_package_bytes",
        2 * 1024**3,
        "Largest payload taken in; a larger file is quarantined.",
    ),
    Setting(
        "gnupg.timeout_seconds",
        600,
        "Deadline for one GnuPG run; a run past it is killed and retried later.",
    ),
    Setting(
        "gnupg.key_days",
        730,
        "Validity of the OpenPGP keys that `init` and `keys rotate` create, in days.",
    ),
    Setting(
        "sftp.connect_timeout_seconds",
        15,
        "Deadline for TCP connect, SSH banner, key exchange and login with a partner.",
    ),
    Setting(
        "sftp.io_timeout_seconds",
        60,
        "Deadline for any single SFTP request without an answer; the connection is then cut.",
    ),
    Setting("retry.first_delay_seconds", 30, "Delay before the first retry of a failed delivery."),
    Setting("retry.max_delay_seconds", 3600, "Longest delay between two retries."),
    Setting(
        "retry.give_up_after_seconds",
        259200,
        "After this long without success a package becomes `failed`.",
    ),
    Setting(
        "receipts.overdue_after_seconds",
        86400,
        "A delivered package with no receipt after this long is overdue.",
    ),
    Setting(
        "serve.listen",
        "",
        "Address:port of the drop server for pull partners, e.g. 0.0.0.0:2222; empty: off.",
    ),
    Setting(
        "audit.checkpoint_seconds",
        3600,
        "How often the daemon signs a checkpoint of the audit trail (also when it stops).",
    ),
    Setting(
        "keys.overlap_days",
        30,
        "After a partner key rotation, how long the old key still verifies its receipts and packages.",
    ),
    Setting("keys.warn_days", 30, "Warn this many days before any key in use expires."),
    Setting("serve.max_connections", 20, "Most drop-server sessions at once; more are refused."),
    Setting("serve.max_auth_attempts", 3, "Keys one connection may try before it is refused."),
    Setting("serve.ban_after_failures", 10, "Failed logins from one address before it is banned."),
    Setting("serve.ban_seconds", 600, "How long a banned address is refused."),
    Setting("serve.idle_timeout_seconds", 300, "A drop-server session idle this long is closed."),
    Setting("serve.max_upload_bytes", 2 * 1024**3 + 1024**2, "Largest file a partner may upload."),
    Setting("serve.auth_timeout_seconds", 30, "A connection not logged in this long is closed."),
    Setting(
        "serve.max_channels_per_connection",
        8,
        "Channels one connection may open; an SFTP client needs one.",
    ),
    Setting("serve.max_open_handles", 64, "Files and folders one session may hold open at once."),
    Setting(
        "serve.max_read_bytes",
        261120,
        "Most bytes one read request is answered with (as OpenSSH's server).",
    ),
    Setting("serve.max_sessions_per_partner", 4, "Sessions one partner may have open at once."),
    Setting(
        "passphrase.credential",
        "gateway-passphrase",
        "Name of the systemd credential holding the keys' passphrase, read from "
        "$CREDENTIALS_DIRECTORY (LoadCredentialEncrypted=); tried first.",
    ),
    Setting(
        "passphrase.file",
        "",
        "File holding the keys' passphrase when no credential is given: mode 0400, owned "
        "by the gateway's user; empty: none.",
    ),
    Setting(
        "duties.calendar",
        "GB-ENG",
        "Working-day calendar of answer periods (holidays library name): GB-ENG is England and Wales.",
    ),
    Setting("duties.warn_days", 3, "Warn this many days before a notification or answer is due."),
    Setting(
        "duties.lone_sidecar_seconds",
        3600,
        "A x.meta.json sidecar with no file x beside it this long is quarantined.",
    ),
    Setting(
        "retention.inbound_days",
        30,
        "Days an accepted inbound delivery may wait in spool/inbound for the upstream system; "
        "then it is erased. 0: kept until taken.",
    ),
    Setting(
        "retention.quarantine_days",
        90,
        "Days a quarantined file and its reason are kept, then erased. 0: kept for ever.",
    ),
    Setting(
        "retention.sealed_days",
        30,
        "Days a sealed file is kept once its package is final (acknowledged, refused, "
        "cancelled), then erased. 0: kept for ever.",
    ),
    Setting(
        "retention.details_days",
        0,
        "Days a final package's ledger details (file name, reference, errors, event details) "
        "are kept, then erased; ids, states, times and hashes stay. 0: kept for ever.",
    ),
    Setting(
        "metrics.listen",
        "",
        "Loopback ADDRESS:PORT the daemon serves Prometheus metrics on, e.g. 127.0.0.1:9817; empty: off.",
    ),
    Setting(
        "metrics.textfile",
        "",
        "File the daemon rewrites for node_exporter's textfile collector (*.prom); empty: off.",
    ),
    Setting("metrics.textfile_seconds", 15, "How often the daemon rewrites metrics.textfile."),
    Setting("check.held_warning", 1, "`gateway check`: held packages for WARNING."),
    Setting("check.held_critical", 10, "`gateway check`: held packages for CRITICAL."),
    Setting("check.failed_critical", 1, "`gateway check`: failed packages for CRITICAL."),
    Setting("check.overdue_warning", 1, "`gateway check`: overdue receipts for WARNING."),
    Setting("check.quarantined_warning", 1, "`gateway check`: quarantine entries for WARNING."),
    Setting(
        "check.partner_down_warning_seconds",
        900,
        "`gateway check`: a partner down this long is a WARNING.",
    ),
    Setting(
        "check.partner_down_critical_seconds",
        3600,
        "`gateway check`: a partner down this long is CRITICAL.",
    ),
    Setting(
        "check.backlog_warning_seconds",
        3600,
        "`gateway check`: oldest undelivered package this old is a WARNING.",
    ),
    Setting(
        "check.backlog_critical_seconds",
        14400,
        "`gateway check`: oldest undelivered package this old is CRITICAL.",
    ),
    Setting(
        "check.disk_warning_mib",
        2048,
        "`gateway check`: free MiB for the home below this is a WARNING.",
    ),
    Setting(
        "check.disk_critical_mib",
        1024,
        "`gateway check`: free MiB for the home below this is CRITICAL.",
    ),
    Setting(
        "check.checkpoint_warning_seconds",
        7200,
        "`gateway check`: newest audit checkpoint this old is a WARNING.",
    ),
    Setting(
        "check.checkpoint_critical_seconds",
        86400,
        "`gateway check`: newest audit checkpoint this old is CRITICAL.",
    ),
    Setting(
        "check.duties_due_soon_warning",
        1,
        "`gateway check`: notifications or answers due within duties.warn_days for WARNING.",
    ),
    Setting(
        "check.duties_late_critical",
        1,
        "`gateway check`: notifications or answers past their period for CRITICAL.",
    ),
    Setting(
        "check.daemon",
        1,
        "`gateway check`: 1: no `gateway run` working on the home is CRITICAL; 0: not checked.",
    ),
    Setting(
        "check.key_critical_days",
        7,
        "`gateway check`: a key this close to expiry is CRITICAL (keys.warn_days: WARNING).",
    ),
)

_BY_NAME: Final = {s.name: s for s in SETTINGS}
#: Settings a running daemon cannot change: they are built into its parts at start.
RESTART: Final = frozenset(
    {"gateway.id", "daemon.workers", "gnupg.timeout_seconds", "keys.overlap_days",
     "metrics.listen", "metrics.textfile", "passphrase.credential", "passphrase.file"}
    | {s.name for s in SETTINGS if s.name.split(".")[0] in ("sftp", "serve")}
)  # fmt: skip
_ZERO_ALLOWED: Final = {
    "daemon.settle_seconds",
    "keys.overlap_days",
    "check.daemon",
    "retention.inbound_days",
    "retention.quarantine_days",
    "retention.sealed_days",
    "retention.details_days",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The settings in force, with every value checked. Field = setting name, dots as `_`."""

    gateway_id: str
    daemon_settle_seconds: int = 2
    daemon_poll_seconds: int = 30
    daemon_scan_seconds: int = 60
    daemon_workers: int = 4
    daemon_max_package_bytes: int = 2 * 1024**3
    gnupg_timeout_seconds: int = 600
    gnupg_key_days: int = 730
    sftp_connect_timeout_seconds: int = 15
    sftp_io_timeout_seconds: int = 60
    retry_first_delay_seconds: int = 30
    retry_max_delay_seconds: int = 3600
    retry_give_up_after_seconds: int = 259200
    receipts_overdue_after_seconds: int = 86400
    serve_listen: str = ""
    audit_checkpoint_seconds: int = 3600
    keys_overlap_days: int = 30
    keys_warn_days: int = 30
    serve_max_connections: int = 20
    serve_max_auth_attempts: int = 3
    serve_ban_after_failures: int = 10
    serve_ban_seconds: int = 600
    serve_idle_timeout_seconds: int = 300
    serve_max_upload_bytes: int = 2 * 1024**3 + 1024**2
    serve_auth_timeout_seconds: int = 30
    serve_max_channels_per_connection: int = 8
    serve_max_open_handles: int = 64
    serve_max_read_bytes: int = 261120
    serve_max_sessions_per_partner: int = 4
    passphrase_credential: str = "gateway-passphrase"  # noqa: S105 (a name, not a secret)
    passphrase_file: str = ""
    duties_calendar: str = "GB-ENG"
    duties_warn_days: int = 3
    duties_lone_sidecar_seconds: int = 3600
    retention_inbound_days: int = 30
    retention_quarantine_days: int = 90
    retention_sealed_days: int = 30
    retention_details_days: int = 0
    metrics_listen: str = ""
    metrics_textfile: str = ""
    metrics_textfile_seconds: int = 15
    check_held_warning: int = 1
    check_held_critical: int = 10
    check_failed_critical: int = 1
    check_overdue_warning: int = 1
    check_quarantined_warning: int = 1
    check_key_critical_days: int = 7
    check_partner_down_warning_seconds: int = 900
    check_partner_down_critical_seconds: int = 3600
    check_backlog_warning_seconds: int = 3600
    check_backlog_critical_seconds: int = 14400
    check_disk_warning_mib: int = 2048
    check_disk_critical_mib: int = 1024
    check_checkpoint_warning_seconds: int = 7200
    check_checkpoint_critical_seconds: int = 86400
    check_duties_due_soon_warning: int = 1
    check_duties_late_critical: int = 1
    check_daemon: int = 1


def parse(data: dict[str, object], where: str = "gateway.toml") -> Settings:
    """Check a parsed settings document and build the settings value."""
    values: dict[str, object] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            raise SettingsInvalid(f"{where}: {section!r} must be a [section]")
        for key, value in table.items():
            name = f"{section}.{key}"
            setting = _BY_NAME.get(name)
            if setting is None:
                raise SettingsInvalid(
                    f"{where}: unknown setting {name!r}: remove it or fix its name"
                )
            if type(value) is not type(setting.default):
                kind = type(setting.default).__name__
                raise SettingsInvalid(
                    f"{where}: {name} must be {'a whole number' if kind == 'int' else 'a string'}"
                )
            if isinstance(value, int) and value < (0 if name in _ZERO_ALLOWED else 1):
                raise SettingsInvalid(f"{where}: {name} must be a positive number")
            values[name.replace(".", "_")] = value
    if "gateway_id" not in values:
        raise SettingsInvalid(
            f"{where}: gateway.id is missing: set it to this gateway's authority id"
        )
    try:
        authority_id(str(values["gateway_id"]))
    except UsageError as problem:
        raise SettingsInvalid(f"{where}: gateway.id: {problem}") from None
    listen = str(values.get("serve_listen", ""))
    host, _, port = listen.rpartition(":")
    if listen and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise SettingsInvalid(
            f"{where}: serve.listen {listen!r} is not ADDRESS:PORT, e.g. 0.0.0.0:2222"
        )
    return Settings(**values)  # type: ignore[arg-type]


def reloaded(old: Settings, new: Settings) -> tuple[Settings, list[str], list[str]]:
    """The settings in force after a reload from `old` to `new`, the names of the changed
    settings applied, and of those changed but kept at their old value until a restart."""
    applied: list[str] = []
    kept: list[str] = []
    for s in SETTINGS:
        field = s.name.replace(".", "_")
        if getattr(old, field) != getattr(new, field):
            (kept if s.name in RESTART else applied).append(s.name)
    merged = dataclasses.replace(
        old, **{n.replace(".", "_"): getattr(new, n.replace(".", "_")) for n in applied}
    )
    return merged, applied, kept


def render(gateway_id: str, chosen: dict[str, int | str] | None = None) -> str:
    """The text of a new `gateway.toml`: every setting, its default (or the value
    `chosen` for it) and its meaning."""
    chosen = {"gateway.id": gateway_id, **(chosen or {})}
    out: list[str] = ["# Exchange gateway settings. Every setting is shown with its default.\n"]
    sections = dict.fromkeys(s.name.split(".")[0] for s in SETTINGS)
    for section in sections:
        out.append(f"\n[{section}]\n")
        for s in SETTINGS:
            head, key = s.name.split(".")
            if head == section:
                value = chosen.get(s.name, s.default)
                out.append(f"# {s.doc}\n{key} = {json.dumps(value)}\n")
    return "".join(out)
