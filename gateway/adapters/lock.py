"""The home's work lock: one `gateway run` per home at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from gateway.core.errors import HomeLocked

#: How many times `exclusive` looks again while only `held` or `holder` probes the lock.
PROBE_WAITS: Final = 10_000


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold the home's work lock, or say which process holds it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not _take(fd):
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


def _take(fd: int) -> bool:
    """Lock `fd` exclusively; False if a `gateway run` holds it.

    `held` and `holder` (`check`, `status`, every minute or so) hold the lock shared for
    an instant: a start that met one must not read it as another `gateway run`. A lock
    that can be had shared is held by no `gateway run`, so it is tried again.
    """
    for _ in range(PROBE_WAITS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # held exclusively: a `gateway run`
        fcntl.flock(fd, fcntl.LOCK_UN)  # only probes: they let go at once
        os.sched_yield()
    return False


def held(lock: Path) -> bool:
    """Whether another process holds the home's work lock (a `gateway run` is working)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released at once, by the close
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def writing(lock: Path) -> Iterator[None]:
    """Mark that this process is writing beside `lock` until the block ends.

    Another process's recovery sees the mark (`being_written`) and leaves the work alone;
    a process killed mid-write leaves a mark nobody holds, which recovery clears. The
    lock file is created, locked, and checked to be still the one at `lock` (recovery
    may have removed a stale one in between), then removed at the end.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # removed under us as stale: take a fresh one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def being_written(lock: Path) -> bool:
    """Whether a live process holds the mark `writing(lock)` made; a stale mark is removed."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # nobody holds it: its writer died
        return False
    finally:
        os.close(fd)


def holder(lock: Path) -> int | None:
    """The pid of the `gateway run` holding the home's work lock, or None if no process does."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
