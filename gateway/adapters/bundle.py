"""A backup on disk: one POSIX tar, written whole or not at all, read back strictly.

Written under a temporary name beside its destination, flushed, then renamed (as every
publish in `files`). Read member by member, never with `extractall`: each member must be
a regular file listed in the manifest, and is written with O_EXCL under a folder this
module made, so no name in it can reach outside the home or through a link.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from gateway.adapters.files import fsync_dir, fsync_file
from gateway.core import backup
from gateway.core.errors import BackupDamaged

_CHUNK = 1024 * 1024


def write(out: Path, manifest: backup.Manifest, files: Iterable[tuple[str, Path]]) -> None:
    """Write the tar `out` (manifest first, then each file under its home path) durably.

    `out` must not exist; a failure leaves nothing under its name.
    """
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, "x", format=tarfile.PAX_FORMAT) as tar:
            head = manifest.render()
            info = tarfile.TarInfo(backup.MANIFEST)
            info.size, info.mode, info.mtime = len(head), 0o600, 0
            tar.addfile(info, io.BytesIO(head))
            for name, path in files:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = manifest.files[name][0], 0o600, 0
                with path.open("rb") as f:
                    tar.addfile(info, f)
        publish_new(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def publish_new(tmp: Path, out: Path) -> None:
    """Move the written file `tmp` to `out` durably, failing if `out` exists meanwhile:
    a backup never overwrites a file (a link, then the temporary name removed)."""
    fsync_file(tmp)
    os.link(tmp, out)
    tmp.unlink()
    fsync_dir(out.parent)


def read(source: Path, root: Path) -> backup.Manifest:
    """Check the backup `source` and write its files below `root` (an empty folder).

    Every member is checked against the manifest's size and SHA-256 as it is written;
    anything else raises `BackupDamaged` (the caller removes what was written).
    """
    try:
        tar = tarfile.open(source, "r:")  # noqa: SIM115 - closed by the with below; uncompressed only
    except (tarfile.TarError, OSError) as e:
        raise BackupDamaged(
            f"{source} is not a backup tar ({e}); if it ends in .pgp, decrypt it first"
        ) from None
    with tar:
        first = tar.next()
        if (
            first is None
            or first.name != backup.MANIFEST
            or not first.isreg()
            or first.size > 64 * 1024**2
        ):
            raise BackupDamaged(f"{source} does not start with a backup manifest")
        manifest = backup.parse(_read_member(tar, first))
        seen: set[str] = set()
        while (member := tar.next()) is not None:
            name = backup.check_path(member.name)
            if not member.isreg() or name not in manifest.files or name in seen:
                raise BackupDamaged(f"{source} holds {name!r}, which its manifest does not list")
            size, sha = manifest.files[name]
            if member.size != size:
                raise BackupDamaged(
                    f"{name} in the backup is {member.size} bytes, its manifest says {size}"
                )
            seen.add(name)
            _extract(tar, member, root / name, sha)
        if missing := sorted(set(manifest.files) - seen):
            raise BackupDamaged(
                f"{source} lacks {len(missing)} files its manifest lists, e.g. {missing[0]}"
            )
    return manifest


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None  # a regular file
    return f.read()


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, sha256: str) -> None:
    for parent in reversed(target.parents):
        if not parent.exists():
            parent.mkdir(mode=0o700)
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256:
        raise BackupDamaged(
            f"{member.name} in the backup does not match its SHA-256 in the manifest"
        )
