"""Working-day calendars, from the `holidays` library (kept up to date by its maintainers).

A calendar is named `CC` or `CC-SUBDIVISION` as the library knows them: `GB-ENG` (the
default, setting `duties.calendar`) for England and Wales, whose bank holidays are
the same; `GB-SCT`, `GB-NIR`, `IE`, `FR`... A working day is a Monday to Friday that is
not a public holiday of that calendar.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import date

import holidays

from gateway.core.errors import SettingsInvalid

_lock = threading.Lock()  # the library fills in years on first use: one thread at a time


@functools.cache
def working_days(name: str) -> Callable[[date], bool]:
    """`is_working(day)` for the calendar `name`, or SettingsInvalid naming what is known."""
    country, _, subdivision = name.partition("-")
    try:
        days = holidays.country_holidays(country, subdiv=subdivision or None)
    except NotImplementedError:
        raise SettingsInvalid(
            f"calendar {name!r} is unknown: use a country code as the holidays library "
            "knows it, e.g. GB-ENG (England and Wales), GB-SCT, IE"
        ) from None

    def is_working(day: date) -> bool:
        if day.weekday() >= 5:
            return False
        with _lock:
            return day not in days

    return is_working
