"""SSH keys as files and text: creating the gateway's own, reading public key lines.

Pure text handling and key generation through `cryptography` (already a dependency of
paramiko), so `init` needs no `ssh-keygen` on the secure host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from pathlib import Path
from typing import Final

from gateway.core.errors import KeyProblem

KEY_TYPES: Final = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_LINE = re.compile(r"(?P<type>[a-z0-9-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})(?: .*)?")


def generate(path: Path, comment: str) -> str:
    """Write a new Ed25519 private key (0600) and its `.pub`; return the public line."""
    # Imported here: only `init` makes keys, and `cryptography` took 0.03 s of the
    # start-up of every command that reads key lines (python -X importtime).
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    line = f"{public} {comment}"
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return line


def parse_public(text: str, what: str = "the SSH key") -> tuple[str, str]:
    """Return (type, base64 blob) of an OpenSSH public key line, checked for shape."""
    match = _LINE.fullmatch(text.strip())
    if match is None or match["type"] not in KEY_TYPES:
        raise KeyProblem(
            f"{what} is not an OpenSSH public key 'TYPE BASE64' with TYPE one of "
            f"{', '.join(KEY_TYPES)}: copy it from `ssh-keyscan` or the partner's key file"
        )
    try:
        blob = base64.b64decode(match["blob"], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        inner_type = blob[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        inner_type = ""
    if inner_type != match["type"]:
        raise KeyProblem(f"{what} is damaged: its data does not hold a {match['type']} key")
    return match["type"], match["blob"]


def fingerprint(text: str) -> str:
    """The OpenSSH SHA256 fingerprint of a public key line, as `ssh-keygen -l` prints it."""
    _, blob = parse_public(text)
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH's known_hosts names a host: plain on port 22, else `[host]:port`."""
    return host if port == 22 else f"[{host}]:{port}"
