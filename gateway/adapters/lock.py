"""The home's work lock: one `gateway run` per home at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gateway.core.errors import HomeLocked


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold the home's work lock, or say which process holds it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise HomeLocked(
                f"another `gateway run` (pid {holder}) is already working on this home: "
                "stop it first, or leave the work to it; other commands can be used beside it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
