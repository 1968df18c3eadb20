"""`gateway check`: the state of a home as a monitoring plugin sees it (Nagios, Icinga,
Sensu, Checkmk): each condition OK, WARNING or CRITICAL by the `[check]` settings, with
its figure as perfdata. The worst condition is the verdict.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from datetime import datetime
from typing import Final

from gateway.adapters import ledger_stats, lock, quarantine
from gateway.app.gateway import Gateway
from gateway.core.errors import GatewayError
from gateway.core.model import utc

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES: Final = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclasses.dataclass(frozen=True)
class Condition:
    """One condition: its verdict, what it found, and its figure for perfdata."""

    name: str
    status: int
    text: str
    value: float
    warn: float | None = None
    crit: float | None = None
    low_is_bad: bool = False  # days left, free disk: alert below the thresholds

    def perfdata(self) -> str:
        """`name=value;warn;crit` as the plugin guidelines write it (`T:` alerts below T)."""
        end = ":" if self.low_is_bad else ""
        levels = ";".join("" if t is None else f"{t:g}{end}" for t in (self.warn, self.crit))
        return f"{self.name}={self.value:g};{levels}".rstrip(";")


def _level(value: float, warn: float | None, crit: float | None) -> int:
    if crit is not None and value >= crit:
        return CRITICAL
    return WARNING if warn is not None and value >= warn else OK


def _counted(name: str, n: int, warn: int | None, crit: int | None, what: str) -> Condition:
    return Condition(name, _level(n, warn, crit), f"{n} {what}", n, warn, crit)


def _age(stamp: str, now: float) -> float:
    return max(0.0, now - datetime.fromisoformat(stamp).timestamp())


def conditions(gw: Gateway) -> Iterator[Condition]:
    """Every condition, in a fixed order."""
    s, now = gw.settings, gw.clock.now()
    counts = gw.ledger.counts(utc(now - s.receipts_overdue_after_seconds))

    def total(state: str) -> int:
        return sum(n for (_, st), n in counts.items() if st == state)

    yield _counted("held", total("held"), s.check_held_warning, s.check_held_critical, "held")
    yield _counted("failed", total("failed"), None, s.check_failed_critical, "failed")
    yield _counted("overdue", total("overdue"), s.check_overdue_warning, None, "overdue")
    yield _counted("quarantined", quarantine.count(gw.home.quarantine), s.check_quarantined_warning,
                   None, "quarantined")  # fmt: skip
    duties = [standing.state for standing in gw.duties.standings()]
    yield _counted("duties_due_soon", duties.count("due-soon"), s.check_duties_due_soon_warning,
                   None, "duties due within duties.warn_days")  # fmt: skip
    yield _counted("duties_late", duties.count("late"), None, s.check_duties_late_critical,
                   "duties late")  # fmt: skip
    yield from _keys(gw, now)
    yield from _partners(gw, now)
    oldest = min(ledger_stats.oldest_pending(gw.ledger).values(), default=None)
    age = _age(oldest, now) if oldest else 0.0
    yield Condition("backlog_age", _level(age, s.check_backlog_warning_seconds, s.check_backlog_critical_seconds),
                    f"oldest undelivered {age:.0f} s", round(age), s.check_backlog_warning_seconds,
                    s.check_backlog_critical_seconds)  # fmt: skip
    free = shutil.disk_usage(gw.home.root).free // 1024**2
    status = (
        CRITICAL
        if free < s.check_disk_critical_mib
        else WARNING
        if free < s.check_disk_warning_mib
        else OK
    )
    yield Condition("disk_free_mib", status, f"{free} MiB free", free, s.check_disk_warning_mib,
                    s.check_disk_critical_mib, low_is_bad=True)  # fmt: skip
    yield from _audit(gw, now)
    if s.check_daemon:
        pid = lock.holder(gw.home.lock)
        yield Condition("daemon", CRITICAL if pid is None else OK,
                        "no `gateway run` on this home" if pid is None else f"daemon pid {pid}", int(pid is not None))  # fmt: skip


def _keys(gw: Gateway, now: float) -> Iterator[Condition]:
    s = gw.settings
    owners = [("the gateway's own key", gw.own_key)] + [
        (f"{p.id}'s key", p.openpgp_key) for p in gw.ledger.partners() if p.enabled
    ]  # a disabled partner's key is used for nothing: its expiry is no alarm
    worst, days_left, text = OK, float("inf"), "keys valid"
    for what, fingerprint in owners:
        try:
            key = gw.keyring.key(fingerprint)
        except GatewayError as err:
            worst, text = CRITICAL, f"{what}: {err}"
            continue
        if problem := key.problem():
            worst, text, days_left = CRITICAL, f"{what} {problem}", 0
            continue
        expires = min((t for t in (key.expires, key.encryption_expires) if t), default=None)
        if expires is None:
            continue
        days = (expires - now) / 86400
        status = _level(-days, -s.keys_warn_days, -s.check_key_critical_days)
        if days < days_left:
            days_left = days
        if status > worst:
            worst, text = status, f"{what} expires {utc(expires)}"
    shown = round(days_left, 1) if days_left != float("inf") else -1
    yield Condition(
        "key_days_left", worst, text, shown, s.keys_warn_days, s.check_key_critical_days, True
    )


def _partners(gw: Gateway, now: float) -> Iterator[Condition]:
    s = gw.settings
    contacts = gw.ledger.contacts()
    down = [(p.id, now - c.down_since) for p in gw.ledger.partners()
            if p.enabled and (c := contacts.get(p.id)) and c.down_since is not None]  # fmt: skip
    longest = max((age for _, age in down), default=0.0)
    status = _level(
        longest, s.check_partner_down_warning_seconds, s.check_partner_down_critical_seconds
    )
    text = ", ".join(f"{pid} down {age:.0f} s" for pid, age in down) or "partners reachable"
    yield Condition("partners_down", status, text, len(down))


def _audit(gw: Gateway, now: float) -> Iterator[Condition]:
    s = gw.settings
    verdict = gw.audit.verify()
    yield Condition("audit_chain", CRITICAL if verdict.problem else OK,
                    f"audit trail: {verdict.problem}" if verdict.problem else "audit trail intact", verdict.events)  # fmt: skip
    last = ledger_stats.last_event(gw.ledger, "audit.checkpoint")
    if last is None:
        yield Condition("checkpoint_age", WARNING, "no audit checkpoint yet", -1)
        return
    age = _age(last, now)
    yield Condition("checkpoint_age", _level(age, s.check_checkpoint_warning_seconds, s.check_checkpoint_critical_seconds),
                    f"newest checkpoint {age:.0f} s old", round(age), s.check_checkpoint_warning_seconds,
                    s.check_checkpoint_critical_seconds)  # fmt: skip


def verdict(found: list[Condition]) -> tuple[int, str]:
    """The exit status and the one status line: the worst condition's name, what is not
    OK (or that all is), then every figure as perfdata after `|`."""
    worst = max((c.status for c in found), default=UNKNOWN)
    bad = [c.text for c in sorted(found, key=lambda c: -c.status) if c.status != OK]
    summary = "; ".join(bad) or "all conditions OK"
    return worst, f"GATEWAY {NAMES[worst]} - {summary} | " + " ".join(c.perfdata() for c in found)
