"""Regimes: the legal bases packages travel under, and the clocks they set. Pure.

The regimes themselves are data (`gateway/core/regimes.toml`, shipped and versioned,
and the home's own `regimes.toml`); this module checks that data and does the date
arithmetic of their clocks. Working days come from a calendar the caller hands in as
`is_working(date) -> bool` (`adapters/calendar.py`), so nothing here knows a holiday.
"""

from __future__ import annotations

import calendar as months
import dataclasses
import re
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from typing import Any, Final

from gateway.core.errors import RegimesInvalid
from gateway.core.names import KINDS

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FIELDS: Final = {"id", "title", "citation", "kinds", "notify_within_days",
                  "answer_within_working_days", "calendar", "batch_every_months",
                  "use_restrictions", "note"}  # fmt: skip
#: The kinds a notification clock applies to.
NOTIFICATIONS: Final = ("conviction", "extradition")


@dataclasses.dataclass(frozen=True)
class Regime:
    """One legal basis: what it covers and the clocks it sets."""

    id: str
    title: str
    citation: str
    kinds: tuple[str, ...]
    source: str  # the file it came from
    notify_within_days: int | None = None
    answer_within_working_days: int | None = None
    calendar: str | None = None
    batch_every_months: int | None = None
    use_restrictions: tuple[str, ...] = ()
    note: str | None = None


def parse(doc: Mapping[str, Any], where: str) -> dict[str, Regime]:
    """Check one regimes file (already parsed TOML) and return its regimes by id."""
    extra = set(doc) - {"version", "regime"}
    if extra:
        raise RegimesInvalid(
            f"{where}: unknown top-level keys {sorted(extra)}: only `version` and [[regime]] tables"
        )
    tables = doc.get("regime", [])
    if not isinstance(tables, list):
        raise RegimesInvalid(f"{where}: `regime` must be a list of [[regime]] tables")
    found: dict[str, Regime] = {}
    for n, table in enumerate(tables, 1):
        regime = _regime(table, f"{where}: regime {n}")
        if regime.id in found:
            raise RegimesInvalid(f"{where}: regime {regime.id} is defined twice: keep one")
        found[regime.id] = dataclasses.replace(regime, source=where)
    return found


def _regime(table: object, where: str) -> Regime:
    if not isinstance(table, dict):
        raise RegimesInvalid(f"{where} must be a [[regime]] table")
    named = f"{where} ({table['id']})" if isinstance(table.get("id"), str) else where
    if unknown := sorted(set(table) - _FIELDS):
        raise RegimesInvalid(f"{named}: unknown fields {unknown}: the fields are {sorted(_FIELDS)}")
    for key in ("id", "title", "citation"):
        if not isinstance(table.get(key), str) or not table[key].strip():
            raise RegimesInvalid(f"{where}: `{key}` must be a non-empty string")
    if not _ID.fullmatch(table["id"]):
        raise RegimesInvalid(
            f"{where}: id {table['id']!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    where = named
    kinds = table.get("kinds")
    if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
        raise RegimesInvalid(f"{where}: `kinds` must list some of {', '.join(KINDS)}")
    numbers = {}
    for key in ("notify_within_days", "answer_within_working_days", "batch_every_months"):
        value = table.get(key)
        if value is not None and (type(value) is not int or not 0 < value <= 3660):
            raise RegimesInvalid(f"{where}: `{key}` must be a whole number from 1 to 3660")
        numbers[key] = value
    restrictions = table.get("use_restrictions", [])
    if not isinstance(restrictions, list) or not all(
        isinstance(r, str) and 0 < len(r) <= 1024 for r in restrictions
    ):
        raise RegimesInvalid(f"{where}: `use_restrictions` must be a list of strings")
    for key in ("calendar", "note"):
        if table.get(key) is not None and not isinstance(table[key], str):
            raise RegimesInvalid(f"{where}: `{key}` must be a string")
    return Regime(id=table["id"], title=table["title"], citation=table["citation"],
                  kinds=tuple(kinds), source="", calendar=table.get("calendar"),
                  use_restrictions=tuple(restrictions), note=table.get("note"),
                  **numbers)  # fmt: skip


def merge(shipped: Mapping[str, Regime], own: Mapping[str, Regime]) -> dict[str, Regime]:
    """The shipped regimes and the home's own; an own regime may not reuse a shipped id."""
    if clash := sorted(set(shipped) & set(own)):
        where = own[clash[0]].source
        raise RegimesInvalid(
            f"{where}: {', '.join(clash)} is a shipped regime: give your own regime an id of its own"
        )
    return {**shipped, **own}


def add_working_days(start: date, count: int, is_working: Callable[[date], bool]) -> date:
    """The `count`th working day after `start` (the day of receipt itself is not counted)."""
    day = start
    while count > 0:
        day += timedelta(days=1)
        count -= is_working(day)
    return day


def add_months(start: date, count: int) -> date:
    """The same day `count` months on (the month's last day when it has no such day)."""
    year, month = divmod(start.month - 1 + count, 12)
    year += start.year
    return date(year, month + 1, min(start.day, months.monthrange(year, month + 1)[1]))


def last_day_to_notify(recorded_on: date, days: int) -> date:
    """The last day of 'the period of `days` days beginning with the day' of recording."""
    return recorded_on + timedelta(days=days - 1)
