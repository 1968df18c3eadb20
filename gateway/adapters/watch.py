"""Watching the outbound spool: the only module that imports `watchdog`.

Events are hints, never the truth: the handler only hands paths to a queue (a handler
that raises would kill watchdog's one dispatcher thread, pitfall W4), and inotify drops
events silently on overflow (W3), so the daemon also scans in full at start and every
`daemon.scan_seconds`. A rename inside the tree is reported as `moved`, with the new
name: such a file is complete and is taken at once (W2).
"""

from __future__ import annotations

import dataclasses
import os
import queue
from pathlib import Path
from typing import Final

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer


@dataclasses.dataclass(frozen=True)
class Hint:
    """Something may have appeared at `path`; `renamed` if it was renamed into place."""

    path: Path
    renamed: bool


#: The events that make hints. The others (opened, closed unwritten, deleted, a folder's
#: entries changed) made four of every five events of a burst of drops, and cost the
#: daemon CPU for nothing; watchdog asks inotify only for these.
_HINTING: Final = [FileMovedEvent, DirMovedEvent, FileCreatedEvent, DirCreatedEvent,
                   FileModifiedEvent, FileClosedEvent]  # fmt: skip


class _Handler(FileSystemEventHandler):
    def __init__(self, hints: queue.Queue[Hint]) -> None:
        self.hints = hints

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            if event.event_type == "moved":
                self.hints.put(Hint(Path(os.fsdecode(event.dest_path)), renamed=True))
            elif event.event_type in ("created", "modified", "closed"):
                self.hints.put(Hint(Path(os.fsdecode(event.src_path)), renamed=False))
        except Exception:  # noqa: S110 - never let the dispatcher thread die; the scan covers it
            pass


class SpoolWatcher:
    """Puts a `Hint` on `hints` for every change below `root`; restartable."""

    def __init__(self, root: Path, hints: queue.Queue[Hint]) -> None:
        self.root = root
        self.hints = hints
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        """Start watching (again)."""
        self.stop()
        observer = Observer()
        observer.schedule(_Handler(self.hints), str(self.root), recursive=True,
                          event_filter=_HINTING)  # fmt: skip
        observer.daemon = True
        observer.start()
        self._observer = observer

    def alive(self) -> bool:
        """Whether the observer thread still runs."""
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        """Stop watching."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
