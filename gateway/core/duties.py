"""What a package declares, whether it may go where it is addressed, and when its duty falls due.

Pure decisions over plain values:
- `Declared`: what the sender says of a package besides the file (from `gateway send`
  options or from a `x.meta.json` sidecar, `parse_sidecar`);
- `legal_basis`: the regime it travels under, from the partner's policy;
- `misrouted`: why it must not go to that partner (the subject's nationalities);
- `duty_for`: the clock it starts (notify, answer, or await the partner's answer);
- `standing`: where a duty stands now (open, due soon, late, met on time or late).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any, Final

from gateway.core.errors import InputRefused, Misrouted, NoLegalBasis, UsageError
from gateway.core.names import package_id
from gateway.core.regimes import (
    NOTIFICATIONS,
    Regime,
    add_working_days,
    last_day_to_notify,
)
from gateway.core.text import read_json

#: A producer's declarations for spool file `x` lie beside it in `x` + SIDECAR.
SIDECAR: Final = ".meta.json"
MAX_SIDECAR_BYTES: Final = 64 * 1024
_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: What a duty is: we must notify by, we must answer by, the partner must answer by.
NOTIFY, ANSWER, AWAIT = "notify", "answer", "await"


def country(text: str) -> str:
    """Return `text` if it is an ISO 3166-1 alpha-2 code in capitals, e.g. FR."""
    if not _COUNTRY.fullmatch(text):
        raise UsageError(f"{text!r} is not a country: use the ISO 3166-1 two-letter code, e.g. FR")
    return text


def day(text: str, what: str) -> str:
    """Return `text` if it is a calendar date YYYY-MM-DD."""
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a date: use YYYY-MM-DD") from None
    return text


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a sender says of a package besides the file. Checked on construction."""

    reference: str | None = None
    legal_basis: str | None = None  # a regime id; the partner's first for the kind when None
    marking: str | None = None
    in_reply_to: str | None = None
    supersedes: str | None = None
    recorded_on: str | None = None  # when the conviction was recorded: the notify clock's start
    nationalities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for value in (self.reference, self.legal_basis, self.marking):
            if value is not None and not 0 < len(value) <= 1024:
                raise UsageError("reference, regime and marking take 1 to 1024 characters")
        for pid in (self.in_reply_to, self.supersedes):
            if pid is not None:
                package_id(pid)
        if self.recorded_on is not None:
            day(self.recorded_on, "the recording date")
        for code in self.nationalities:
            country(code)

    @staticmethod
    def of(values: Mapping[str, Any]) -> Declared:
        """Build from plain values, as `plain()` gives them (lists for tuples)."""
        plain: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }
        return Declared(**plain)

    def plain(self) -> dict[str, Any]:
        """The declarations given, as plain JSON values."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items() if v}  # fmt: skip


#: Sidecar field -> Declared field.
_SIDECAR_FIELDS: Final = {"reference": "reference", "regime": "legal_basis", "marking": "marking",
                          "in_reply_to": "in_reply_to", "supersedes": "supersedes",
                          "recorded_on": "recorded_on", "nationalities": "nationalities"}  # fmt: skip


def parse_sidecar(data: bytes) -> Declared:
    """Read a `x.meta.json` sidecar; anything wrong raises `InputRefused` saying what."""
    doc = read_json(data, MAX_SIDECAR_BYTES, "the sidecar")
    if not isinstance(doc, dict):
        raise InputRefused("the sidecar must be one JSON object")
    if unknown := sorted(set(doc) - set(_SIDECAR_FIELDS)):
        raise InputRefused(
            f"the sidecar has unknown fields {unknown}: it may hold {', '.join(_SIDECAR_FIELDS)}"
        )
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "nationalities":
            if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
                raise InputRefused("sidecar field 'nationalities' must be a list of country codes")
            value = tuple(value)
        elif not isinstance(value, str):
            raise InputRefused(f"sidecar field {key!r} must be a string")
        values[_SIDECAR_FIELDS[key]] = value
    try:
        return Declared(**values)
    except UsageError as problem:
        raise InputRefused(f"the sidecar: {problem}") from None


def legal_basis(partner: str, kind: str, asked: str | None, allowed: Sequence[str],
                regimes: Mapping[str, Regime]) -> Regime:  # fmt: skip
    """The regime a package of `kind` goes to `partner` under: the one asked for, if the
    partner's policy allows it, else the policy's first for that kind."""
    register = f"`gateway partner set {partner} --regime {kind}=REGIME --reason R`"
    if not allowed:
        raise NoLegalBasis(
            f"{partner} is registered to receive no {kind} under any regime: register one "
            f"with {register} (`gateway regimes` lists them)"
        )
    if asked is not None and asked not in allowed:
        raise NoLegalBasis(
            f"{partner} is not registered to receive {kind} under {asked} (it may under "
            f"{', '.join(allowed)}): name one of those, or register it with {register}"
        )
    chosen = asked or allowed[0]
    if chosen not in regimes:
        raise NoLegalBasis(
            f"regime {chosen}, registered for {partner}, is in no regimes file: restore it in "
            f"the home's regimes.toml, or register another with {register}"
        )
    return regimes[chosen]


def misrouted(
    partner: str, serves: Sequence[str], nationalities: Sequence[str]
) -> Misrouted | None:
    """Why a package about a person of `nationalities` must not go to `partner`, or None.

    A package that declares no nationality is not checked. The partner serves its own
    country (its id's prefix) and the countries it is registered as a channel for.
    """
    if not nationalities or set(serves) & set(nationalities):
        return None
    return Misrouted(
        f"the package concerns a national of {', '.join(nationalities)}, and {partner} serves "
        f"{', '.join(serves)}: send it to a partner of that country, or, if {partner} is a "
        f"channel for it, `gateway partner set {partner} --channel-for CC --reason R`"
    )


def duty_for(regime: Regime, kind: str, direction: str, start: date,
             is_working: Callable[[date], bool]) -> tuple[str, date] | None:  # fmt: skip
    """The duty a package starts and its last day, or None.

    Outbound notification: `start` is the recording date. Inbound request: the day it
    was received. Outbound request: the day it was delivered (the partner's clock).
    """
    if direction == "out" and kind in NOTIFICATIONS and regime.notify_within_days:
        return NOTIFY, last_day_to_notify(start, regime.notify_within_days)
    if kind == "request" and regime.answer_within_working_days:
        last = add_working_days(start, regime.answer_within_working_days, is_working)
        return (ANSWER if direction == "in" else AWAIT), last
    return None


def end_of(day_: date) -> str:
    """The last moment of a day (UTC), in the ledger's timestamp form."""
    return f"{day_.isoformat()}T23:59:59.999Z"


def standing(due_at: str | None, met_at: str | None, now: str, soon: str) -> str:
    """Where a duty stands: `met`, `met-late`, `late`, `due-soon` (due before `soon`), `open`.

    All arguments are ledger timestamps (UTC ISO strings compare in time order).
    """
    if due_at is None:
        return "open"  # an outbound request not delivered yet: the partner's clock has not started
    if met_at is not None:
        return "met" if met_at <= due_at else "met-late"
    if now > due_at:
        return "late"
    return "due-soon" if due_at <= soon else "open"
