"""Crash-safe file primitives: nothing is renamed into place before it is on disk.

A renamed file can vanish or come back empty after a power loss unless the file and
its folder were both flushed (research/library-pitfalls.md X1). Every publish here is
temporary name, fsync, `os.replace`, fsync of the folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import stat
from pathlib import Path

from gateway.core.errors import InputRefused


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or unlink in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `path` whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_flushed(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a new file and flush it to disk, in place: for a file in a folder that
    nothing reads before the caller has flushed the folder too."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def publish(tmp: Path, final: Path) -> None:
    """Move a fully written `tmp` to `final` durably (both in the same folder tree)."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if tmp.parent != final.parent:
        fsync_dir(tmp.parent)


def fsync_file(path: Path) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_regular(path: Path, *, single_link: bool) -> int:
    """Open a regular file for reading without following a link; return the descriptor.

    O_NOFOLLOW refuses a symlink as the last component; O_NONBLOCK keeps a FIFO from
    blocking the open; the checks run on the opened file, so nothing can be swapped in
    between the check and the read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputRefused("it is a symbolic link; links are never followed") from None
        if e.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
            raise InputRefused("it is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused("it is not a regular file")
        if single_link and st.st_nlink != 1:
            raise InputRefused(
                f"it has {st.st_nlink} hard links; only a file with one link is taken"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def owner(path: Path) -> str:
    """The OS account that owns `path` itself (a link's own owner, never its target's)."""
    uid = os.lstat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"
