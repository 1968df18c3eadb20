"""What lies in the outbound spool, and whether it is ready to be taken (SPEC section 3).

`spool/outbound/<PARTNER>/<kind>/<file>` is the only place a package may be dropped.
Temporary names are left alone for their producer; anything else in a wrong place, or
not a regular file, is still listed, so that intake quarantines it with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from gateway.core.duties import SIDECAR
from gateway.core.names import is_temporary


@dataclasses.dataclass(frozen=True)
class Entry:
    """One thing found in the outbound spool, with the partner and kind its place names."""

    path: Path
    partner: str | None
    kind: str | None
    stat: os.stat_result

    @property
    def regular(self) -> bool:
        """A regular file (not a link, folder, FIFO, socket or device)."""
        return stat.S_ISREG(self.stat.st_mode)

    def settled(self, now: float, settle_seconds: float, renamed: bool = False) -> bool:
        """It and its sidecar, if any, unchanged for `settle_seconds`: their writer is done.

        `renamed`: the file itself was renamed into place, so it is whole; its sidecar
        must still be settled (a sidecar is taken with its file, never after it).
        """
        mtimes = [] if renamed else [self.stat.st_mtime]
        with contextlib.suppress(FileNotFoundError):
            mtimes.append(os.lstat(self.path.with_name(self.path.name + SIDECAR)).st_mtime)
        return all(now - mtime >= settle_seconds for mtime in mtimes)

    def owner(self) -> Entry:
        """For a sidecar whose file is there, the file's entry (the two are taken together)."""
        if not self.path.name.endswith(SIDECAR):
            return self
        path = self.path.with_name(self.path.name.removesuffix(SIDECAR))
        try:
            return Entry(path, self.partner, self.kind, os.lstat(path))
        except FileNotFoundError:
            return self


def _children(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    for name in names:
        path = folder / name
        if is_temporary(name):
            continue
        try:
            yield path, os.lstat(path)
        except FileNotFoundError:
            continue


def entries(outbound: Path) -> Iterator[Entry]:
    """Everything in the outbound spool that is not a temporary name, in a stable order."""
    for partner_path, partner_stat in _children(outbound):
        if not stat.S_ISDIR(partner_stat.st_mode):
            yield Entry(partner_path, None, None, partner_stat)
            continue
        for kind_path, kind_stat in _children(partner_path):
            if not stat.S_ISDIR(kind_stat.st_mode):
                yield Entry(kind_path, partner_path.name, None, kind_stat)
                continue
            for path, st in _children(kind_path):
                yield Entry(path, partner_path.name, kind_path.name, st)


def locate(outbound: Path, path: Path) -> Entry | None:
    """The entry at `path` (from a file-system event), or None if it is not one to consider.

    Folders at the partner and kind levels are structure, not entries.
    """
    try:
        parts = path.relative_to(outbound).parts
        st = os.lstat(path)
    except (ValueError, FileNotFoundError):
        return None
    if not parts or len(parts) > 3 or any(is_temporary(p) for p in parts):
        return None
    if len(parts) < 3 and stat.S_ISDIR(st.st_mode):
        return None
    partner = parts[0] if len(parts) > 1 else None
    kind = parts[1] if len(parts) > 2 else None
    return Entry(path, partner, kind, st)
