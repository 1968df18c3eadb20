"""What a gpg run must have said: the checks of its status lines, as pure functions.

GnuPG reports what it did on its status lines (`[GNUPG:] KEYWORD ...`, doc/DETAILS in
GnuPG's sources); `ok` and the return code alone prove neither who signed nor to whom a
message was encrypted (research/library-pitfalls.md G4). `adapters/gpg.py` runs gpg;
this module reads what it said.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from gateway.core.errors import (
    CryptoFailed,
    HostTrouble,
    KeyProblem,
    PassphraseMissing,
    PassphraseWrong,
    Rejected,
)

#: SPEC section 4: AES-256 (cipher 9), SHA-256 or better (digests 8, 9, 10).
AES256: Final = "9"
SHA256_OR_BETTER: Final = {"8", "9", "10"}
#: libgpg-error's code for a wrong passphrase, in the low 16 bits of an ERROR or FAILURE line.
BAD_PASSPHRASE: Final = 11
#: What a bad signature line means, most specific first (gpg reports an unknown key as
#: both ERRSIG and NO_PUBKEY: the operator needs to hear "not pinned").
BAD_SIGNATURES: Final = {
    "NO_PUBKEY": "it is signed by a key that is not pinned for this partner",
    "REVKEYSIG": "the signer's key is revoked",
    "EXPKEYSIG": "the signer's key has expired",
    "BADSIG": "the signature is bad",
    "EXPSIG": "the signature has expired",
    "ERRSIG": "the signature cannot be checked",
}


@dataclasses.dataclass(frozen=True)
class Run:
    """What one gpg run said: its return code and its stderr with the status lines."""

    returncode: int
    stderr: str

    @property
    def ok(self) -> bool:
        """What python-gnupg calls `ok`: gpg finished an encryption or a decryption."""
        keywords = {line[0] for line in status(self.stderr) if line}
        return bool(keywords & {"END_ENCRYPTION", "DECRYPTION_OKAY"})


def passphrase_trouble(lines: list[list[str]]) -> None:
    """Raise if gpg-agent could not use the gateway's secret key for want of its passphrase.

    Checked before anything else: a package that could not be opened because the
    passphrase was wrong is the host's trouble, never the sender's, and is not refused.
    """
    keywords = {line[0] for line in lines if line}
    codes = {int(line[-1]) & 0xFFFF for line in lines
             if line and line[0] in ("ERROR", "FAILURE") and line[-1].isdigit()}  # fmt: skip
    if "BAD_PASSPHRASE" in keywords or BAD_PASSPHRASE in codes:
        raise PassphraseWrong(
            "the passphrase given does not open the gateway's OpenPGP key; nothing was signed "
            "or decrypted: give the one the keys were protected with"
        )
    if keywords & {"PINENTRY_LAUNCHED", "INQUIRE_MAXLEN", "MISSING_PASSPHRASE"}:
        raise PassphraseMissing(
            "the gateway's OpenPGP key asks for a passphrase and none was given: see "
            "`gateway doctor`, and give it as the operator guide says"
        )


def check_opened(result: Run, signers: frozenset[str], encrypted: bool) -> str:
    """The signer of a message gpg opened (decrypted, where `encrypted`, and verified);
    `Rejected` with the reason unless one good signature by one of `signers` and, with
    `encrypted`, a decryption to us whose integrity check passed."""
    if any(line[0] == "NEED_PASSPHRASE_SYM" for line in status(result.stderr) if line):
        # Encrypted with a passphrase, not to our key: the sender's fault, refused first,
        # whatever gpg made of it (with protected keys it tried our passphrase on it and
        # must not be told whether that worked).
        raise Rejected("it is encrypted with a passphrase, not to this gateway's key")
    passphrase_trouble(status(result.stderr))
    if "exceeded --max-output limit" in result.stderr:
        raise Rejected(
            "it unpacks to more than the size limit (daemon.max_package_bytes): a compression bomb?"
        )
    lines = status(result.stderr)
    keywords = {line[0] for line in lines if line}
    valid = [line for line in lines if line[0] == "VALIDSIG"]
    for keyword, why in BAD_SIGNATURES.items():
        if keyword in keywords:
            raise Rejected(why)
    if not valid or "GOODSIG" not in keywords:
        raise Rejected("it carries no valid signature")
    if len(valid) > 1:
        raise Rejected("it carries more than one signature")
    signer = str(valid[0][-1])  # the primary key's fingerprint
    if signer not in signers:
        raise Rejected(f"it is signed by {signer}, which is not the partner's pinned key")
    if encrypted and (
        "DECRYPTION_OKAY" not in keywords or keywords & {"DECRYPTION_FAILED", "BADMDC"}
    ):
        raise Rejected(
            "it is not encrypted to this gateway's key, or its integrity check failed", signer
        )
    if result.returncode != 0:
        raise Rejected(f"GnuPG could not open it (return code {result.returncode})", signer)
    return signer


def status(stderr: str) -> list[list[str]]:
    """The status lines in gpg's stderr, each split into its keyword and arguments."""
    return [line.split()[1:] for line in stderr.splitlines() if line.startswith("[GNUPG:] ")]


def check_sealed(result: Run, signer: str, recipient: str) -> None:
    """Raise unless gpg signed with `signer` (SHA-256 or better) and encrypted with AES-256
    to `recipient` alone; the error says whose key or what failed."""
    lines = status(result.stderr)
    passphrase_trouble(lines)
    keywords = {line[0] for line in lines if line}
    if "No space left on device" in result.stderr:
        raise HostTrouble(
            "no space left on the spool's disk: GnuPG could not write the sealed package; "
            "it will be tried again"
        )
    if "INV_SGNR" in keywords:  # refused before any recipient is looked at
        raise KeyProblem(
            f"GnuPG will not sign with the gateway's key {signer}: see `gateway keys show`"
        )
    if "INV_RECP" in keywords or "KEY_CONSIDERED" not in keywords:
        raise KeyProblem(
            f"GnuPG will not encrypt to {recipient}: the partner's key may have expired"
        )
    signed = [line for line in lines if line[0] == "SIG_CREATED"]
    encrypted = [line for line in lines if line[0] == "BEGIN_ENCRYPTION"]
    ok = (
        result.ok
        and result.returncode == 0
        and len(signed) == 1
        and signed[0][-1] == signer
        and signed[0][3] in SHA256_OR_BETTER
        and len(encrypted) == 1
        and encrypted[0][-1] == AES256
        and "END_ENCRYPTION" in keywords
        and any(line[0] == "KEY_CONSIDERED" and line[1] == recipient for line in lines)
    )
    if not ok:
        said = [line for line in result.stderr.splitlines() if line.startswith("gpg: ")]
        raise CryptoFailed(
            f"GnuPG did not sign with {signer} and encrypt to {recipient} as required "
            f"(return code {result.returncode}{', ' + said[-1] if said else ''}); nothing was sent"
        )


def check_signed(result: Run, signer: str) -> None:
    """Raise unless gpg made exactly one signature, with `signer`."""
    passphrase_trouble(status(result.stderr))
    created = [line for line in status(result.stderr) if line[0] == "SIG_CREATED"]
    if result.returncode != 0 or len(created) != 1 or created[0][-1] != signer:
        raise CryptoFailed(f"GnuPG did not sign with {signer} (return code {result.returncode})")
