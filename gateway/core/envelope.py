"""The plaintext inside a package (SPEC section 4): the manifest and the tar that carries it.

Pure code: the manifest is a frozen value with a strict parser, and the tar is produced
as a stream of chunks so that sealing a 1 GiB payload needs no more memory than a 4 KiB one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any, Final

from gateway.core.errors import InputRefused, SpoolDamaged, UsageError
from gateway.core.names import MANIFEST, authority_id, kind, package_id, payload_name
from gateway.core.text import read_json

SCHEMA: Final = "gateway-envelope/1"
PAYLOAD_DIR: Final = "payload/"
MAX_MANIFEST_BYTES: Final = 64 * 1024
CHUNK: Final = 1024 * 1024
_FPR = re.compile(r"[0-9A-F]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")  # ASCII digits only


@dataclasses.dataclass(frozen=True)
class Party:
    """A sender or recipient: authority id and primary key fingerprint."""

    id: str
    key: str


@dataclasses.dataclass(frozen=True)
class Payload:
    """The payload's plain file name, size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The signed description of a package; names both parties so it cannot be forwarded."""

    package_id: str
    kind: str
    sender: Party
    recipient: Party
    created_at: str
    payload: Payload
    reference: str | None = None
    legal_basis: str | None = None
    marking: str | None = None
    in_reply_to: str | None = None
    supersedes: str | None = None  # the package this one amends (EUFRA 2020 s.1(7))
    use_restrictions: tuple[str, ...] | None = None  # of the regime named in legal_basis

    def to_json(self) -> bytes:
        """The manifest as UTF-8 JSON, optional fields left out when empty."""
        doc: dict[str, Any] = {"schema": SCHEMA}
        for field in dataclasses.fields(self):  # not asdict(): its deep copy cost 0.2 ms a seal
            value = getattr(self, field.name)
            if isinstance(value, Party | Payload):
                value = dict(vars(value))
            if value is not None:
                doc[field.name] = value
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def fingerprint(text: object, what: str) -> str:
    """Return `text` if it is a 40-hex OpenPGP v4 fingerprint (capitals), else raise."""
    if not isinstance(text, str) or not _FPR.fullmatch(text):
        raise UsageError(f"{what} must be a 40-character hexadecimal fingerprint in capitals")
    return text


def _text(doc: dict[str, Any], key: str, optional: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > 1024:
        raise InputRefused(f"manifest field {key!r} must be a non-empty string")
    return value


def _party(doc: dict[str, Any], key: str) -> Party:
    value = doc.get(key)
    if not isinstance(value, dict) or set(value) != {"id", "key"}:
        raise InputRefused(f"manifest field {key!r} must hold exactly 'id' and 'key'")
    return Party(authority_id(str(value["id"])), fingerprint(value["key"], f"{key}.key"))


def parse_manifest(data: bytes) -> Manifest:
    """Parse and check a manifest; anything unexpected raises `InputRefused` naming it."""
    try:
        return _manifest(data)
    except UsageError as problem:  # an id, a kind or a fingerprint that is not one
        raise InputRefused(str(problem)) from None


def _manifest(data: bytes) -> Manifest:
    doc = read_json(data, MAX_MANIFEST_BYTES, "the manifest")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InputRefused(f"the manifest is not a {SCHEMA} object")
    known = {f.name for f in dataclasses.fields(Manifest)} | {"schema"}
    if extra := sorted(set(doc) - known):
        raise InputRefused(f"the manifest has unknown fields: {', '.join(extra)}")
    pay = doc.get("payload")
    if not isinstance(pay, dict) or set(pay) != {"name", "size", "sha256"}:
        raise InputRefused("manifest field 'payload' must hold exactly 'name', 'size' and 'sha256'")
    name, size, digest = pay["name"], pay["size"], pay["sha256"]
    if not isinstance(name, str):
        raise InputRefused("manifest field 'payload.name' must be a string")
    if type(size) is not int or size < 0:
        raise InputRefused("manifest field 'payload.size' must be a whole number of bytes")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise InputRefused("manifest field 'payload.sha256' must be 64 lowercase hex digits")
    created = _text(doc, "created_at")
    try:
        datetime.strptime(created or "", "%Y-%m-%dT%H:%M:%SZ")
        valid = bool(_TIME.fullmatch(created or ""))
    except ValueError:
        valid = False
    if not valid:
        raise InputRefused("manifest field 'created_at' must be UTC time as 2026-11-28T18:00:00Z")
    in_reply_to = _text(doc, "in_reply_to", optional=True)
    supersedes = _text(doc, "supersedes", optional=True)
    restrictions = doc.get("use_restrictions")
    if restrictions is not None and (
        not isinstance(restrictions, list)
        or not 0 < len(restrictions) <= 32
        or not all(isinstance(r, str) and 0 < len(r) <= 1024 for r in restrictions)
    ):
        raise InputRefused("manifest field 'use_restrictions' must be a list of 1 to 32 strings")
    return Manifest(
        package_id=package_id(str(_text(doc, "package_id"))),
        kind=kind(str(_text(doc, "kind"))),
        sender=_party(doc, "sender"),
        recipient=_party(doc, "recipient"),
        created_at=str(created),
        payload=Payload(payload_name(name), size, digest),
        reference=_text(doc, "reference", optional=True),
        legal_basis=_text(doc, "legal_basis", optional=True),
        marking=_text(doc, "marking", optional=True),
        in_reply_to=None if in_reply_to is None else package_id(in_reply_to),
        supersedes=None if supersedes is None else package_id(supersedes),
        use_restrictions=None if restrictions is None else tuple(restrictions),
    )


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def tar_chunks(manifest: Manifest, payload: IO[bytes], mtime: int) -> Iterator[bytes]:
    """Yield a POSIX tar of `manifest.json` then `payload/<name>`, streaming the payload.

    The payload is hashed as it streams; if it does not match the manifest (the file
    changed under us), the stream ends with an error instead of a valid tar.
    """
    body = manifest.to_json()
    yield _header(MANIFEST, len(body), mtime) + body + _padding(len(body))
    yield _header(PAYLOAD_DIR + manifest.payload.name, manifest.payload.size, mtime)
    digest, size = hashlib.sha256(), 0
    while chunk := payload.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if size > manifest.payload.size:
            break
        yield chunk
    if size != manifest.payload.size or digest.hexdigest() != manifest.payload.sha256:
        raise SpoolDamaged(
            "the payload changed while it was being sealed, in the gateway's own spool: "
            "check the host's disk and who can write to spool/work, then `gateway retry`"
        )
    yield _padding(size) + b"\0" * (2 * tarfile.BLOCKSIZE)


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks (what GnuPG's stdin reads)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._view = memoryview(b"")

    def readable(self) -> bool:
        """Always readable."""
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (all that is left if -1), without the zero-filled buffer of
        `size` bytes that RawIOBase.read makes first (1 MiB per read of a small package)."""
        if size is None or size < 0:
            return self.readall()
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._view = memoryview(chunk)
        n = min(size, len(self._view))
        out = bytes(self._view[:n])
        self._view = self._view[n:]
        return out

    def readinto(self, target: Any) -> int:
        """Fill `target` from the next chunks; 0 at the end."""
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view = memoryview(chunk)
        n = min(len(target), len(self._view))
        target[:n] = self._view[:n]
        self._view = self._view[n:]
        return n
