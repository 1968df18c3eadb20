"""Log lines on stderr: one per event, text for people or JSON for log shippers.

Log messages carry ids, states and reasons only: never a payload byte or key material;
as text, their control characters are escaped (`gateway.core.text`).

When stderr is the journal (systemd says so in `$JOURNAL_STREAM`), every line starts
with its syslog priority, `<3>` error to `<7>` debug, which journald reads and strips:
`journalctl -p warning` then finds the warnings. JSON lines are python-json-logger's,
one object a line, with the event's own fields (`FIELDS`) and any traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, Final

from pythonjsonlogger.json import JsonFormatter

from gateway.core.text import shown

#: The fields of a JSON line beside time, level, logger, message and exception (its
#: traceback): null when the line is not about a package or a partner.
FIELDS: Final = ("package_id", "partner", "action", "state", "error")
#: syslog priorities (RFC 5424) of the levels, as journald reads them from `<N>`.
PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _Json(JsonFormatter):
    """python-json-logger's formatter, with the gateway's fields always present."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
            },
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """The standard fields, the level in lower case, and each of FIELDS (null if unset)."""
        super().add_fields(log_data, record, message_dict)
        log_data["level"] = record.levelname.lower()
        for name in (*FIELDS, "exception"):
            log_data.setdefault(name, getattr(record, name, None))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC, ISO 8601 with milliseconds."""
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class _Text(logging.Formatter):
    """One line per event: a message's control characters (a partner's newline or escape
    sequence in a reason it sent) are escaped; a traceback follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message)
        return super().formatMessage(record)


class _Journal(logging.Formatter):
    """Each line of another formatter's output with the record's `<N>` priority in front
    (a traceback's lines too, so they reach the journal at the same priority)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each line."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def to_journal() -> bool:
    """Whether stderr is the journal: `$JOURNAL_STREAM` names its device and inode."""
    named = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # an in-memory stderr (tests, click's runner)
        return False
    return named == f"{st.st_dev}:{st.st_ino}"


def setup(debug: bool, log_format: str) -> None:
    """Send the gateway's logs to stderr in the chosen format, prefixed for the journal."""
    handler = _Stderr()
    formatter: logging.Formatter = (
        _Json() if log_format == "json" else _Text("%(asctime)s %(levelname)s %(message)s")
    )
    handler.setFormatter(_Journal(formatter) if to_journal() else formatter)
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    logging.getLogger("paramiko").setLevel(logging.DEBUG if debug else logging.CRITICAL)
