"""Log lines on stderr: one per event, text for people or JSON for log shippers.

Log messages carry ids, states and reasons only: never a payload byte or key material;
as text, their control characters are escaped (`gateway.core.text`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gateway.core.text import shown


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                    timespec="milliseconds"
                ),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            ensure_ascii=False,
        )


class _Text(logging.Formatter):
    """One line per event: a message's control characters (a partner's newline or escape
    sequence in a reason it sent) are escaped; a traceback follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message)
        return super().formatMessage(record)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each line."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def setup(debug: bool, log_format: str) -> None:
    """Send the gateway's logs to stderr in the chosen format."""
    handler = _Stderr()
    if log_format == "json":
        handler.setFormatter(_Json())
    else:
        handler.setFormatter(_Text("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    logging.getLogger("paramiko").setLevel(logging.DEBUG if debug else logging.CRITICAL)
