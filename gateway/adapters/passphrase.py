"""The passphrase of the gateway's protected keys: where it is read from, and how it is held.

It comes from a systemd credential (`$CREDENTIALS_DIRECTORY/<passphrase.credential>`, so
`LoadCredentialEncrypted=` with `systemd-creds` keeps it encrypted at rest and out of
the unit file), else from the file named by `passphrase.file`, which must be a regular
file of mode 0400 owned by the user the gateway runs as: a file others could read or
replace would undo the protection. It is never put on a command line, in an environment
variable, a log line or an error message: GnuPG reads it from a pipe with
`--pinentry-mode loopback` (for sealing, opening and signing a pipe of its own beside
the data, `--passphrase-fd N`; for key management its stdin), paramiko from memory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gateway.adapters.home import user_name
from gateway.core.errors import PassphraseMissing, SettingsInvalid
from gateway.core.settings import Settings

MAX_BYTES: Final = 4096
#: gpg-agent's key derivation is kept cheap (every signature runs it; gateway.adapters.gpg),
#: so the passphrase itself must be strong: at least this long, and meant to be random.
MIN_CHARACTERS: Final = 20
REQUIRED_MODE: Final = 0o400
HOW: Final = (
    "give it as the systemd credential {credential} (LoadCredentialEncrypted= in the unit), "
    "or set passphrase.file in gateway.toml to a file of mode 0400 owned by {user}"
)


class Passphrase:
    """A passphrase in memory; its repr and str never show it."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = text

    def reveal(self) -> str:
        """The passphrase itself, for the one call that hands it to GnuPG or paramiko."""
        return self._text

    def __repr__(self) -> str:
        return "Passphrase(<hidden>)"

    __str__ = __repr__


def user() -> str:
    """The name of the user this process runs as (who must own the passphrase file)."""
    return user_name(os.geteuid())


def how(settings: Settings) -> str:
    """What an operator does to give the passphrase, for error messages."""
    return HOW.format(credential=settings.passphrase_credential, user=user())


def read_passphrase(settings: Settings, environ: Mapping[str, str] | None = None) -> Passphrase:
    """The passphrase from the systemd credential, else from passphrase.file.

    Raises `PassphraseMissing`, saying how to give it, when neither holds one, or when
    the file is not a regular file of mode 0400 owned by this process's user.
    """
    environ = os.environ if environ is None else environ
    name = settings.passphrase_credential
    if not name or "/" in name or name in (".", ".."):
        raise SettingsInvalid(
            f"passphrase.credential {name!r} is not a credential name: use e.g. gateway-passphrase"
        )
    folder = environ.get("CREDENTIALS_DIRECTORY")
    if folder and (Path(folder) / name).is_file():
        # systemd made this file for this service alone (0400, owned by its user, on ramfs).
        return _parse(_read(Path(folder) / name, settings, check_owner=False), Path(folder) / name)
    if settings.passphrase_file:
        path = Path(settings.passphrase_file)
        return _parse(_read(path, settings, check_owner=True), path)
    raise PassphraseMissing(
        "the gateway's keys are protected by a passphrase and none was given: " + how(settings)
    )


def _read(path: Path, settings: Settings, check_owner: bool) -> bytes:
    try:
        # O_NOFOLLOW and fstat on the descriptor read: the file checked is the file read.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PassphraseMissing(
            f"the passphrase file {path} does not exist: " + how(settings)
        ) from None
    except OSError as err:
        raise PassphraseMissing(
            f"the passphrase file {path} cannot be opened ({err.strerror}; a link is refused): "
            + how(settings)
        ) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if check_owner:
            if not stat.S_ISREG(info.st_mode):
                raise PassphraseMissing(
                    f"the passphrase file {path} is not a regular file: " + how(settings)
                )
            mode = stat.S_IMODE(info.st_mode)
            if mode != REQUIRED_MODE:
                raise PassphraseMissing(
                    f"the passphrase file {path} has mode {mode:04o}, not 0400, so it was not "
                    f"read: `chmod 0400 {path}`"
                )
            if info.st_uid != os.geteuid():
                owner = user_name(info.st_uid)
                raise PassphraseMissing(
                    f"the passphrase file {path} is owned by {owner}, not by {user()} who runs the "
                    f"gateway, so it was not read: `chown {user()} {path}`"
                )
        return f.read(MAX_BYTES + 1)


def _parse(data: bytes, path: Path) -> Passphrase:
    """The passphrase in `data`: one line, a final newline dropped (`echo` and `systemd-creds`
    leave one); no other line break or NUL, which could smuggle input to GnuPG
    (research/library-pitfalls.md G1, checklist 6)."""
    if len(data) > MAX_BYTES:
        raise PassphraseMissing(f"{path} is longer than {MAX_BYTES} bytes: it holds no passphrase")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PassphraseMissing(f"{path} is not UTF-8 text: write the passphrase as text") from None
    if not text or any(c in text for c in "\r\n\0"):
        raise PassphraseMissing(
            f"{path} must hold the passphrase on one line, not empty and without NUL: rewrite it"
        )
    if len(text) < MIN_CHARACTERS:
        raise PassphraseMissing(
            f"the passphrase in {path} is shorter than {MIN_CHARACTERS} characters: use a random "
            "one, e.g. `head -c 32 /dev/urandom | base64`"
        )
    return Passphrase(text)
