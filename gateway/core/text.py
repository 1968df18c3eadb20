"""Text from partners and the spool: read within bounds, and made safe to print on a
terminal or in a text log.

A manifest's `reference`, a receipt's `reason`, a file name: anything a partner chose
can hold escape sequences that rewrite an operator's terminal, bidi controls that show
one thing and mean another, or a newline that forges a whole log or ledger line. Shown
as text, each such character is escaped; JSON output keeps the text exact (JSON
escapes control characters itself).
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from gateway.core.errors import InputRefused

#: Unicode categories escaped: controls, format characters (bidi overrides, zero-width
#: joiners), line and paragraph separators, surrogates.
_ESCAPED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def shown(text: str) -> str:
    """`text` with every control, format and line-separator character escaped (`\\x1b`,
    `\\u202e`); everything else as it is."""
    if text.isascii() and text.isprintable():  # the usual log line: nothing to escape, and
        return text  # looking each character up cost 0.3 ms of a small package's CPU
    return "".join(
        (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if unicodedata.category(c) in _ESCAPED
        else c
        for c in text
    )


def read_json(data: bytes, limit: int, what: str) -> Any:
    """`data` read as UTF-8 JSON of at most `limit` bytes (a manifest, a sidecar, a receipt);
    `InputRefused` naming `what` otherwise. The caller checks the shape."""
    if len(data) > limit:
        raise InputRefused(f"{what} is larger than {limit} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: JSON, huge numbers
        raise InputRefused(f"{what} is not UTF-8 JSON") from None
