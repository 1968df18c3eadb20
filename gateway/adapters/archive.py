"""Opening a received envelope: the tar inside a package, read strictly from disk.

The tar is read with `tarfile` member by member, never extracted: no name in it ever
becomes a path (research/domain.md section 5 rule 8).
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import IO

from gateway.core.envelope import (
    CHUNK,
    MAX_MANIFEST_BYTES,
    PAYLOAD_DIR,
    Manifest,
    parse_manifest,
)
from gateway.core.errors import InputRefused, Rejected
from gateway.core.names import MANIFEST


def unpack(tar_path: Path, payload_out: Path, max_payload: int) -> Manifest:
    """Read a received envelope strictly; write the payload to `payload_out`; return the manifest.

    Exactly two regular-file members, `manifest.json` then `payload/<the manifest's name>`;
    no links, devices, folders, extra members, compression or oversized parts. The
    payload is streamed to disk and must match the manifest's size and SHA-256.
    """
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isreg():
                raise Rejected("the envelope does not start with a manifest.json file")
            if first.size > MAX_MANIFEST_BYTES:
                raise Rejected(f"manifest.json is larger than {MAX_MANIFEST_BYTES} bytes")
            manifest = parse_manifest(_read(tar, first))
            second = tar.next()
            if (
                second is None
                or second.name != PAYLOAD_DIR + manifest.payload.name
                or not second.isreg()
            ):
                raise Rejected("the envelope's second member is not the payload the manifest names")
            if second.size != manifest.payload.size or second.size > max_payload:
                raise Rejected("the payload's size is not the manifest's, or is over the limit")
            digest = hashlib.sha256()
            with _member(tar, second) as src, payload_out.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != manifest.payload.sha256:
                raise Rejected("the payload's SHA-256 is not the manifest's")
            if tar.next() is not None:
                raise Rejected("the envelope holds more than manifest.json and the payload")
    except (tarfile.TarError, EOFError, ValueError, UnicodeError):  # a crafted header (PAX, sparse)
        raise Rejected("the envelope is not a valid uncompressed tar") from None
    except InputRefused as problem:
        raise Rejected(f"the manifest is invalid: {problem}") from None
    return manifest


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    extracted = tar.extractfile(member)
    if extracted is None:
        raise Rejected(f"{member.name} is not a regular file")
    return extracted


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    with _member(tar, member) as f:
        return f.read(MAX_MANIFEST_BYTES + 1)
