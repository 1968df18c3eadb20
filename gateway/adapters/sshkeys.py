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

from gateway.adapters.files import write_atomic
from gateway.adapters.passphrase import Passphrase
from gateway.core.errors import KeyProblem, PassphraseWrong

KEY_TYPES: Final = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_LINE = re.compile(r"(?P<type>[a-z0-9-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})(?: .*)?")


def generate(path: Path, comment: str, passphrase: Passphrase | None = None) -> str:
    """Write a new Ed25519 private key (0600), encrypted with `passphrase` if given, and its
    `.pub`; return the public line."""
    # Imported here: only `init` makes keys, and `cryptography` took 0.03 s of the
    # start-up of every command that reads key lines (python -X importtime).
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = _private_bytes(key, passphrase)
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


def _private_bytes(key: object, passphrase: Passphrase | None) -> bytes:
    """The key in OpenSSH's format; with a passphrase, encrypted (aes256-ctr, bcrypt KDF),
    which paramiko and OpenSSH both read."""
    from cryptography.hazmat.primitives import serialization

    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.reveal().encode())
        if passphrase
        else serialization.NoEncryption()
    )
    data: bytes = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )
    return data


_MAGIC: Final = b"openssh-key-v1\0"


def encrypted(path: Path) -> bool:
    """Whether the OpenSSH private key at `path` is encrypted (its cipher is not `none`)."""
    lines = path.read_text(errors="replace").splitlines()
    body = "".join(line for line in lines if not line.startswith("-----"))
    try:
        blob = base64.b64decode(body)
        if not blob.startswith(_MAGIC):
            raise ValueError
        (length,) = struct.unpack(">I", blob[len(_MAGIC) : len(_MAGIC) + 4])
        cipher = blob[len(_MAGIC) + 4 : len(_MAGIC) + 4 + length]
    except (ValueError, binascii.Error, struct.error):
        raise KeyProblem(
            f"{path} is not an OpenSSH private key: restore keys/ssh from backup"
        ) from None
    return cipher != b"none"


def protect(path: Path, passphrase: Passphrase) -> None:
    """Encrypt the (unencrypted) private key at `path` with `passphrase`, in place, atomically."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise PassphraseWrong(
            f"{path} is already encrypted, or damaged: it was left as it is"
        ) from None
    write_atomic(path, _private_bytes(key, passphrase), mode=0o600)


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
