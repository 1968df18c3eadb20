"""What a pull partner may see on the drop server: every client path resolved once, here.

The partner's whole world is `/`, `/download` and `/upload`, and plain file names
directly inside those two. Nothing a client sends (`..`, absolute paths, `//`, NUL,
control characters, backslashes, overlong names) can name anything else: there is no
mapping to a host path except `Jail.host_path`, which only joins a checked name to the
partner's own mailbox folder (research/library-pitfalls.md P9).
"""

from __future__ import annotations

import dataclasses
import posixpath
import unicodedata
from pathlib import Path
from typing import Final, Literal

from gateway.core.names import MAX_NAME_BYTES

Area = Literal["root", "download", "upload"]
AREAS: Final = ("download", "upload")
MAX_PATH: Final = 1024


class OutsideJail(Exception):
    """The client's path names nothing the partner may see."""


@dataclasses.dataclass(frozen=True)
class Location:
    """A checked place in the partner's view: an area, and a file name in it or None."""

    area: Area
    name: str | None = None

    @property
    def path(self) -> str:
        """The client's view of this place."""
        if self.area == "root":
            return "/"
        return f"/{self.area}" + (f"/{self.name}" if self.name else "")


def _plain(name: str) -> bool:
    return (
        0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
        and name not in (".", "..")
        and not any(c in "/\\" or (unicodedata.category(c)[0] in "CZ" and c != " ") for c in name)
    )


def resolve(path: str) -> Location:
    """Resolve a client path (relative paths start at `/`) or raise `OutsideJail`."""
    if len(path) > MAX_PATH or "\0" in path or "\\" in path:
        raise OutsideJail(path)
    if any(unicodedata.category(c) == "Cc" for c in path):
        raise OutsideJail(path)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        # Lexically `..` may still stay inside (e.g. /upload/../download); allowing it gains
        # a client nothing and costs a reader a proof, so it is refused outright.
        raise OutsideJail(path)
    if not parts:
        return Location("root")
    if parts[0] not in AREAS or len(parts) > 2:
        raise OutsideJail(path)
    area: Area = "download" if parts[0] == "download" else "upload"
    if len(parts) == 1:
        return Location(area)
    if not _plain(parts[1]):
        raise OutsideJail(path)
    return Location(area, parts[1])


class Jail:
    """One partner's mailbox on the host: `download/` and `upload/` below `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def host_path(self, location: Location) -> Path:
        """The host path of a file location (never of the root)."""
        if location.area == "root":
            raise OutsideJail("/")
        folder = self.root / location.area
        if location.name is None:
            return folder
        host = folder / location.name
        assert posixpath.dirname(str(host)) == str(folder), "a checked name is a single component"
        return host
