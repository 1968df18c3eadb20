"""The quarantine (SPEC section 3): rejected input, kept with a reason, never used.

Each entry is `spool/quarantine/<id>` (moved, never copied: a link moves as a link and
its target is never read) beside `<id>.reason.json` saying what it was, why it was
refused, when, and what to do.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from gateway.adapters.files import fsync_dir, write_atomic


def describe(path: Path) -> str:
    """What kind of file-system entry `path` is, without following a link."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return "gone"
    for test, what in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "folder"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISREG, "file")):  # fmt: skip
        if test(mode):
            return what
    return "device"


def put(quarantine: Path, path: Path, entry_id: str, report: dict[str, Any]) -> dict[str, Any]:
    """Move `path` into quarantine as `entry_id` with its reason file; return the report."""
    report = {"id": entry_id, "what": describe(path), **report}
    write_atomic(
        quarantine / f"{entry_id}.reason.json",
        json.dumps(report, indent=2, ensure_ascii=False).encode(),
    )
    if report["what"] != "gone":
        os.rename(path, quarantine / entry_id)
        fsync_dir(quarantine)
        fsync_dir(path.parent)
    return report


def count(quarantine: Path) -> int:
    """How many entries the quarantine holds (each with its reason file, not counted)."""
    return sum(not p.name.endswith(".reason.json") for p in quarantine.iterdir())
