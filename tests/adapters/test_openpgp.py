"""The OpenPGP adapter against real gpg: own key, pinned partner keys, sealing, deadlines.

The partner is played by plain `gpg` (`PartnerPgp`); keys that are expired, revoked or
unable to encrypt are made with plain gpg too, the way a partner could send them.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.clock import SystemClock
from gateway.adapters.gpg import Keyring
from gateway.core.errors import CryptoFailed, GatewayError, KeyProblem, Timeout
from tests.helpers import GATEWAY_ID, PartnerPgp

PAST = "20200101T000000"  # a --faked-system-time long before any test runs


@pytest.fixture
def keyring(short_tmp: Path) -> Iterator[Keyring]:
    """The gateway's fresh keyring; its gpg-agent is stopped afterwards."""
    keyring = Keyring.create(short_tmp / "ring", timeout=60, clock=SystemClock())
    yield keyring
    keyring.close()
    keyring.stop_agent()


@pytest.fixture
def own_key(keyring: Keyring) -> str:
    return keyring.generate(GATEWAY_ID, days=30)


def colons(home: Path, fingerprint: str) -> list[list[str]]:
    """`gpg --list-keys --with-colons` of one key in a keyring folder, split into fields."""
    done = subprocess.run(
        ["gpg", "--homedir", str(home), "--with-colons", "--list-keys", fingerprint],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return [line.split(":") for line in done.stdout.decode().splitlines()]


def new_key(pgp: PartnerPgp, name: str, *, encrypt: bool = True, when: str | None = None,
            expire: str = "1y", subkey_expire: str | None = None) -> str:  # fmt: skip
    """Make another key in the partner's keyring with plain gpg; return its fingerprint.

    `when` fakes the creation time, so that a short `expire` is long past.
    """
    before = set(pgp.colons("--list-keys"))
    faked = ["--faked-system-time", when] if when else []
    pgp.gpg(*faked, "--quick-gen-key", f"{name} <{name.lower()}@x.invalid>", "ed25519",
            "cert,sign", expire)  # fmt: skip
    [fingerprint] = set(pgp.colons("--list-keys")) - before
    if encrypt:
        pgp.gpg(*faked, "--quick-add-key", fingerprint, "cv25519", "encr", subkey_expire or expire)
    return fingerprint


def export(pgp: PartnerPgp, fingerprint: str, path: Path) -> Path:
    path.write_bytes(pgp.gpg("--export", "--armor", fingerprint).stdout)
    return path


def secret_keys(keyring: Keyring) -> list[str]:
    """Fingerprints of the primary keys whose secret is in the gateway's keyring."""
    done = subprocess.run(
        ["gpg", "--homedir", str(keyring.home), "--with-colons", "--list-secret-keys"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    fields = [line.split(":") for line in done.stdout.decode().splitlines()]
    return [f[9] for prev, f in itertools.pairwise(fields) if prev[0] == "sec" and f[0] == "fpr"]


def assert_not_imported(keyring: Keyring, fingerprint: str) -> None:
    with pytest.raises(KeyProblem, match="not in the keyring"):
        keyring.key(fingerprint)


# -- the gateway's own key --------------------------------------------------------------


def test_generated_key_is_ed25519_with_an_expiring_cv25519_encryption_subkey(
    keyring: Keyring,
) -> None:
    fingerprint = keyring.generate(GATEWAY_ID, days=30)

    lines = colons(keyring.home, fingerprint)
    [pub] = [f for f in lines if f[0] == "pub"]
    [sub] = [f for f in lines if f[0] == "sub"]
    # fields: 4 algorithm (22 EdDSA, 18 ECDH), 6 created, 7 expires, 12 capabilities, 17 curve
    assert (pub[3], pub[16]) == ("22", "ed25519")
    assert {"s", "c"} <= set(pub[11]) and "e" not in pub[11]
    assert (sub[3], sub[16]) == ("18", "cv25519")
    assert sub[11] == "e"
    for key in (pub, sub):
        assert key[6], "the key expires"
        assert int(key[6]) - int(key[5]) == 30 * 86400

    info = keyring.key(fingerprint)
    assert info.can_sign and info.can_encrypt
    assert info.problem() is None
    assert info.uids == (f"{GATEWAY_ID} exchange gateway <gateway@gb-acro.invalid>",)
    assert secret_keys(keyring) == [fingerprint]


def test_pinning_a_partner_adds_no_secret_key(
    keyring: Keyring, own_key: str, partner_pgp: PartnerPgp
) -> None:
    keyring.import_pinned(partner_pgp.public_key, partner_pgp.fingerprint)

    assert secret_keys(keyring) == [own_key]


# -- pinning partner keys ---------------------------------------------------------------


def test_import_pinned_accepts_the_exact_key(keyring: Keyring, partner_pgp: PartnerPgp) -> None:
    info = keyring.import_pinned(partner_pgp.public_key, partner_pgp.fingerprint)

    assert info.fingerprint == partner_pgp.fingerprint
    assert info.can_encrypt
    assert info.problem() is None
    assert keyring.key(partner_pgp.fingerprint) == info


def test_import_pinned_refuses_a_wrong_fingerprint(keyring: Keyring,
                                                   partner_pgp: PartnerPgp) -> None:  # fmt: skip
    wrong = partner_pgp.fingerprint[:-1] + ("0" if partner_pgp.fingerprint[-1] != "0" else "1")

    with pytest.raises(KeyProblem, match="not exactly " + wrong):
        keyring.import_pinned(partner_pgp.public_key, wrong)

    assert_not_imported(keyring, partner_pgp.fingerprint)


def test_import_pinned_refuses_a_file_with_two_keys_even_if_one_matches(
    keyring: Keyring, partner_pgp: PartnerPgp, short_tmp: Path
) -> None:
    other = new_key(partner_pgp, "Other")
    both = short_tmp / "both.asc"
    both.write_bytes(
        partner_pgp.public_key.read_bytes()
        + export(partner_pgp, other, short_tmp / "o").read_bytes()
    )

    with pytest.raises(KeyProblem, match="not exactly") as caught:
        keyring.import_pinned(both, partner_pgp.fingerprint)

    assert other in str(caught.value), "the message names what the file really holds"
    assert_not_imported(keyring, partner_pgp.fingerprint)
    assert_not_imported(keyring, other)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a key\n", os.urandom(512), b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx\n"],
    ids=["empty", "text", "random", "broken-armor"],
)
def test_import_pinned_refuses_a_file_without_a_key(
    keyring: Keyring, partner_pgp: PartnerPgp, short_tmp: Path, content: bytes
) -> None:
    key_file = short_tmp / "key.asc"
    key_file.write_bytes(content)

    with pytest.raises(KeyProblem, match="no OpenPGP key, not exactly"):
        keyring.import_pinned(key_file, partner_pgp.fingerprint)

    assert_not_imported(keyring, partner_pgp.fingerprint)


def test_import_pinned_refuses_an_expired_key(keyring: Keyring, partner_pgp: PartnerPgp,
                                              short_tmp: Path) -> None:  # fmt: skip
    old = new_key(partner_pgp, "Old", when=PAST, expire="1d")

    with pytest.raises(KeyProblem, match="expired"):
        keyring.import_pinned(export(partner_pgp, old, short_tmp / "old.asc"), old)

    assert_not_imported(keyring, old)


def test_import_pinned_refuses_a_key_whose_only_encryption_subkey_expired(
    keyring: Keyring, partner_pgp: PartnerPgp, short_tmp: Path
) -> None:
    """The primary key is current, but nothing can be encrypted to it any more."""
    stale = new_key(partner_pgp, "Stale", when=PAST, expire="20y", subkey_expire="1d")
    lines = colons(partner_pgp.home, stale)
    assert [f[1] for f in lines if f[0] in ("pub", "sub")] == ["u", "e"], "only the subkey expired"

    with pytest.raises(KeyProblem, match="encryption"):
        keyring.import_pinned(export(partner_pgp, stale, short_tmp / "stale.asc"), stale)

    assert_not_imported(keyring, stale)


def test_import_pinned_refuses_a_revoked_key(keyring: Keyring, partner_pgp: PartnerPgp,
                                             short_tmp: Path) -> None:  # fmt: skip
    revoked = new_key(partner_pgp, "Revoked")
    # gpg wrote a revocation certificate at key creation, with its armor line "defused"
    cert = (partner_pgp.home / "openpgp-revocs.d" / f"{revoked}.rev").read_text()
    partner_pgp.gpg("--import", input=cert.replace(":-----BEGIN", "-----BEGIN").encode())
    assert [f[1] for f in colons(partner_pgp.home, revoked) if f[0] == "pub"] == ["r"]

    with pytest.raises(KeyProblem, match="revoked"):
        keyring.import_pinned(export(partner_pgp, revoked, short_tmp / "rev.asc"), revoked)

    assert_not_imported(keyring, revoked)


def test_import_pinned_refuses_a_key_that_cannot_encrypt(
    keyring: Keyring, partner_pgp: PartnerPgp, short_tmp: Path
) -> None:
    sign_only = new_key(partner_pgp, "SignOnly", encrypt=False)

    with pytest.raises(KeyProblem, match="encryption"):
        keyring.import_pinned(export(partner_pgp, sign_only, short_tmp / "s.asc"), sign_only)

    assert_not_imported(keyring, sign_only)


def test_import_pinned_never_takes_a_partner_secret_key(
    keyring: Keyring, own_key: str, partner_pgp: PartnerPgp, short_tmp: Path
) -> None:
    """A partner who sends `--export-secret-keys` by mistake: the secret must stay out.

    The gateway's keyring holds the secrets of its own keys only; partner keys are pinned
    public keys. Refusing the file or importing only its public part are both fine;
    keeping a partner's secret key (it decrypts what is sent to that partner) is not.
    """
    secret = short_tmp / "secret.asc"
    exported = partner_pgp.gpg("--export-secret-keys", "--armor", partner_pgp.fingerprint)
    secret.write_bytes(exported.stdout)

    with contextlib.suppress(KeyProblem):
        keyring.import_pinned(secret, partner_pgp.fingerprint)

    assert secret_keys(keyring) == [own_key], "the partner's secret key was imported"


# -- sealing ----------------------------------------------------------------------------


@pytest.fixture
def pinned(keyring: Keyring, own_key: str, partner_pgp: PartnerPgp) -> PartnerPgp:
    """The partner's key pinned in the gateway keyring, the gateway's key known to the partner."""
    keyring.import_pinned(partner_pgp.public_key, partner_pgp.fingerprint)
    partner_pgp.trust_gateway(keyring.export_public(own_key))
    return partner_pgp


def test_sealed_file_opens_with_plain_gpg_and_is_signed_by_the_gateway(
    keyring: Keyring, own_key: str, pinned: PartnerPgp, short_tmp: Path
) -> None:
    payload = os.urandom(200_000) + b"\x00end"
    out = short_tmp / "p.pgp"

    keyring.seal(io.BytesIO(payload), out, own_key, pinned.fingerprint, hide=True)

    plaintext, status = pinned.decrypt(out)
    assert plaintext == payload
    [validsig] = [line.split() for line in status if line.startswith("VALIDSIG ")]
    assert validsig[1] == own_key
    assert validsig[8] == "8", "SHA-256"
    assert any(line.startswith("DECRYPTION_INFO 2 9") for line in status), "AES-256 with MDC"


@pytest.mark.parametrize("hide", [True, False])
def test_hide_throws_the_recipient_key_id(
    keyring: Keyring, own_key: str, pinned: PartnerPgp, short_tmp: Path, hide: bool
) -> None:
    [encryption_subkey_id] = [
        f[4] for f in colons(pinned.home, pinned.fingerprint) if f[0] == "sub"
    ]
    out = short_tmp / "p.pgp"

    keyring.seal(io.BytesIO(b"notice"), out, own_key, pinned.fingerprint, hide=hide)

    packets = pinned.gpg("--list-packets", str(out), check=False).stdout.decode()
    assert ("keyid 0000000000000000" in packets) is hide
    assert (f"keyid {encryption_subkey_id}" in packets) is not hide
    assert packets.count(":pubkey enc packet:") == 1, "one recipient only"


def test_sealing_to_a_key_not_in_the_keyring_is_refused(
    keyring: Keyring, own_key: str, partner_pgp: PartnerPgp, short_tmp: Path
) -> None:
    out = short_tmp / "p.pgp"

    with pytest.raises(KeyProblem, match=partner_pgp.fingerprint):
        keyring.seal(io.BytesIO(b"notice"), out, own_key, partner_pgp.fingerprint, hide=True)

    assert not out.exists()


@pytest.mark.parametrize("size", [6, 4 * 1024 * 1024], ids=["small", "past the pipe's buffer"])
def test_sealing_with_a_signer_that_has_no_secret_key_is_refused(
    keyring: Keyring, own_key: str, pinned: PartnerPgp, short_tmp: Path, size: int
) -> None:
    """The partner's public key as the signer: gpg refuses to sign, nothing must be
    written; a package larger than the pipe's buffer says the same (gpg stops reading it
    early), never that the disk is full."""
    out = short_tmp / "p.pgp"

    with pytest.raises(KeyProblem, match="will not sign with the gateway's key") as caught:
        keyring.seal(io.BytesIO(os.urandom(size)), out, pinned.fingerprint, pinned.fingerprint,
                     hide=True)  # fmt: skip

    assert pinned.fingerprint in str(caught.value)
    assert not out.exists()
    assert list(short_tmp.glob("p.pgp*")) == []


def test_a_passphrase_check_with_a_key_we_cannot_sign_with_fails(
    keyring: Keyring, own_key: str, pinned: PartnerPgp
) -> None:
    """The check must sign with the key named or fail: given a key whose secret part is
    not here, gpg under `--default-key` signed with the gateway's own key and said yes."""
    keyring.check_passphrase(own_key)  # the key it holds: fine

    with pytest.raises(CryptoFailed, match=f"did not sign with {pinned.fingerprint}"):
        keyring.check_passphrase(pinned.fingerprint)

    assert list(keyring.home.glob(".passphrase-check*")) == []


# -- deadlines --------------------------------------------------------------------------


def test_a_hanging_gpg_is_killed_at_the_deadline(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `gpg` first on PATH that answers the version probe, then hangs on real work."""
    real_gpg = shutil.which("gpg")
    stub_dir = short_tmp / "bin"
    stub_dir.mkdir()
    pids = short_tmp / "stub-pids"
    stub = stub_dir / "gpg"
    stub.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        '  case "$arg" in --version|--list-config) exec ' + f'{real_gpg} "$@";; esac\n'
        "done\n"
        f"echo $$ >> {pids}\n"
        "exec sleep 600\n"  # exec: the hanging process is the one python-gnupg started
    )
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub_dir}:{os.environ['PATH']}")
    keyring = Keyring.create(short_tmp / "ring", timeout=1, clock=SystemClock())
    try:
        started = time.monotonic()
        with pytest.raises(Timeout, match="list keys"):
            keyring.key("A" * 40)
        elapsed = time.monotonic() - started
    finally:
        keyring.close()
        keyring.stop_agent()

    assert 1 <= elapsed < 5
    [pid] = pids.read_text().split()
    assert not Path(f"/proc/{pid}").exists(), "the hung gpg was killed and reaped"


def test_a_hanging_seal_is_killed_at_the_deadline_and_leaves_no_file(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, partner_pgp: PartnerPgp
) -> None:
    """Sealing drives gpg itself: its deadline, its `Timeout` and its clean-up must hold too."""
    real_gpg = shutil.which("gpg")
    stub_dir = short_tmp / "bin"
    stub_dir.mkdir()
    pids = short_tmp / "stub-pids"
    stub = stub_dir / "gpg"
    stub.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f'  case "$arg" in --encrypt) echo $$ >> {pids}; exec sleep 600;; esac\n'
        "done\n"
        f'exec {real_gpg} "$@"\n'
    )
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub_dir}:{os.environ['PATH']}")
    keyring = Keyring.create(short_tmp / "ring", timeout=1, clock=SystemClock())
    out = short_tmp / "p.pgp"
    try:
        own = keyring.generate(GATEWAY_ID, days=30)
        keyring.import_pinned(partner_pgp.public_key, partner_pgp.fingerprint)
        with pytest.raises(Timeout, match="seal a package"):
            keyring.seal(io.BytesIO(b"notice"), out, own, partner_pgp.fingerprint, hide=True)
    finally:
        keyring.close()
        keyring.stop_agent()

    assert not out.exists()
    [pid] = pids.read_text().split()
    assert not Path(f"/proc/{pid}").exists(), "the hung gpg was killed and reaped"


class _FailingSource(io.RawIOBase):
    """A plaintext stream that breaks after its first megabyte (as a vanished payload would)."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.sent >= 1024 * 1024:
            raise OSError(5, "Input/output error")
        buffer[:] = b"x" * len(buffer)
        self.sent += len(buffer)
        return len(buffer)


def test_a_plaintext_that_fails_midway_seals_nothing(
    keyring: Keyring, own_key: str, pinned: PartnerPgp, short_tmp: Path
) -> None:
    out = short_tmp / "p.pgp"

    with pytest.raises(GatewayError, match="GnuPG stopped before it could seal a package"):
        keyring.seal(_FailingSource(), out, own_key, pinned.fingerprint, hide=True)

    assert not out.exists()


def test_a_large_file_is_opened_from_its_file(
    keyring: Keyring, own_key: str, pinned: PartnerPgp, short_tmp: Path
) -> None:
    """gpg reads the package from its file (no copy through Python) and writes the plaintext."""
    payload = os.urandom(3 * 1024 * 1024 + 17)
    plain, sealed, out = short_tmp / "plain", short_tmp / "in.pgp", short_tmp / "out"
    plain.write_bytes(payload)
    pinned.gpg("--sign", "--encrypt", "--recipient", own_key, "--trust-model", "always",
               "--output", str(sealed), str(plain))  # fmt: skip

    signer = keyring.open_message(sealed, out, frozenset({pinned.fingerprint}), encrypted=True,
                                  max_output=4 * 1024 * 1024)  # fmt: skip

    assert signer == pinned.fingerprint
    assert out.read_bytes() == payload
