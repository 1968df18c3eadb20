"""Names of the contract (SPEC section 2 and 3): authority ids, package ids, kinds, file names.

Pure functions only. Each parser either returns a valid value or raises saying what was
wrong, so a bad name never gets further than the edge: `UsageError` for an id or a kind
(what an operator types), `InputRefused` for a file's name (what a file brings).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from typing import Final

from gateway.core.errors import InputRefused, UsageError

KINDS: Final = ("conviction", "extradition", "request", "response")

_AUTHORITY = re.compile(r"[A-Z]{2}-[A-Z0-9]{1,16}")
_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ULID = re.compile(rf"[0-7][{_CROCKFORD}]{{25}}")
_PACKAGE = re.compile(rf"(?P<sender>[A-Z]{{2}}-[A-Z0-9]{{1,16}})-(?P<ulid>{_ULID.pattern})")
#: A file name on the wire: `<package_id>.pgp` or `<package_id>.receipt`.
WIRE_NAME: Final = re.compile(rf"(?P<pid>{_PACKAGE.pattern})(?P<suffix>\.pgp|\.receipt)")
_TEMPORARY_SUFFIXES: Final = (".part", ".tmp", ".partial", "~")
MAX_NAME_BYTES: Final = 200
#: The manifest's name in the envelope and in spool/inbound/<PARTNER>/<package_id>/: no payload's.
MANIFEST: Final = "manifest.json"


def authority_id(text: str) -> str:
    """Return `text` if it is an authority id such as ``GB-ACRO``."""
    if not _AUTHORITY.fullmatch(text):
        raise UsageError(
            f"{text!r} is not an authority id: use the ISO 3166-1 country code, a dash and "
            "up to 16 capital letters or digits, e.g. GB-ACRO"
        )
    return text


def kind(text: str) -> str:
    """Return `text` if it is one of the package kinds."""
    if text not in KINDS:
        raise UsageError(f"{text!r} is not a package kind: use one of {', '.join(KINDS)}")
    return text


def new_ulid(now: float, randomness: bytes | None = None) -> str:
    """A ULID for time `now`: 48-bit millisecond time then 80 random bits, in Crockford base32."""
    millis = int(now * 1000)
    rand = secrets.token_bytes(10) if randomness is None else randomness
    value = (millis << 80) | int.from_bytes(rand, "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def new_package_id(sender: str, now: float) -> str:
    """A fresh, time-ordered package id for a package sent by `sender` at time `now`."""
    return f"{authority_id(sender)}-{new_ulid(now)}"


def package_id(text: str) -> str:
    """Return `text` if it is a package id such as ``GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M``."""
    if not _PACKAGE.fullmatch(text):
        raise UsageError(
            f"{text!r} is not a package id: expected the sender's authority id, a dash "
            "and a 26-character ULID, as printed by `gateway send`"
        )
    return text


def package_sender(pid: str) -> str:
    """The authority id that a package id names as its sender."""
    match = _PACKAGE.fullmatch(pid)
    if match is None:
        raise UsageError(f"{pid!r} is not a package id")
    return match["sender"]


def is_temporary(name: str) -> bool:
    """True for names that a producer is still writing: dot-files and temporary suffixes."""
    return name.startswith(".") or name.endswith(_TEMPORARY_SUFFIXES)


def payload_name(raw: str | bytes) -> str:
    """Return the file name if it may travel as a payload name, else say why not.

    A payload name is printable UTF-8, at most 200 bytes, a single path component,
    not a dot-file and not a temporary name (SPEC section 3).
    """
    if isinstance(raw, bytes):
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputRefused(
                "the file name is not UTF-8: rename the file and drop it again"
            ) from None
    else:
        name = raw
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InputRefused(
                "the file name is not UTF-8: rename the file and drop it again"
            ) from None
    if not name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise InputRefused(f"the file name must be 1 to {MAX_NAME_BYTES} bytes: rename the file")
    if name.strip() != name:
        raise InputRefused("the file name starts or ends with a space: rename the file")
    if "/" in name or name in (".", ".."):
        raise InputRefused("the file name must be a plain name, not a path")
    if any(unicodedata.category(c)[0] in "CZ" and c != " " for c in name):
        raise InputRefused(
            "the file name holds control or invisible characters: rename the file using "
            "letters, digits, spaces and punctuation only"
        )
    if is_temporary(name):
        raise InputRefused(
            "the file name is a dot-file or ends like a temporary file "
            "(.part, .tmp, .partial, ~): rename the file"
        )
    if name == MANIFEST:
        raise InputRefused(
            f"the file name {MANIFEST} is the gateway's own, kept beside the payload: rename the file"
        )
    return name


def wire_name(pid: str) -> str:
    """The name a sealed package travels under: carries no person data and no kind."""
    return f"{package_id(pid)}.pgp"


def receipt_name(pid: str) -> str:
    """The name a receipt of package `pid` travels under."""
    return f"{package_id(pid)}.receipt"
