"""OpenPGP through GnuPG: the only module that imports `gnupg`.

The keyring (`keys/gnupg`) holds the gateway's own key and the partners' keys, each
pinned by its full fingerprint; nothing is ever looked up by user id or fetched from
a key server. Every GnuPG run has a deadline and every result is checked for what it
must say, not only for `ok` (research/library-pitfalls.md G3-G6).
"""

from __future__ import annotations

import dataclasses
import io
import math
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

import gnupg

from gateway.core.clock import Clock
from gateway.core.errors import (
    AgentUnavailable,
    CryptoFailed,
    HostTrouble,
    KeyProblem,
    Rejected,
    Timeout,
    Transient,
)

# Options on every run: no network look-ups, no chatter that could hide status lines.
_OPTIONS: Final = ["--no-auto-key-retrieve", "--auto-key-locate", "clear", "--no-greeting"]
# SPEC section 4: AES-256, SHA-256, no compression (compression leaks through length
# and lets inbound archives be bombs: research/domain.md section 5 rule 8).
_SEAL_ARGS: Final = [
    "--cipher-algo",
    "AES256",
    "--digest-algo",
    "SHA256",
    "--compress-algo",
    "none",
    "--no-emit-version",
]
_AES256: Final = "9"
_SHA256_OR_BETTER: Final = {"8", "9", "10"}
_AGENT_CONF: Final = "default-cache-ttl 0\nmax-cache-ttl 0\n"
LISTING_SECONDS: Final = 10.0


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What the gateway needs to know of one OpenPGP key; never any secret."""

    fingerprint: str
    uids: tuple[str, ...]
    expires: int | None  # primary key expiry, seconds since the epoch; None: never
    revoked: bool
    expired: bool
    encryption_expires: int | None  # the latest valid encryption subkey's expiry
    can_encrypt: bool
    can_sign: bool

    def problem(self) -> str | None:
        """Why this key cannot be used for a partner now, or None."""
        if self.revoked:
            return "the key is revoked"
        if self.expired:
            return "the key has expired"
        if not self.can_encrypt:
            return "the key has no valid encryption subkey"
        return None


def _epoch(text: str) -> int | None:
    return int(text) if text else None


def _key_info(raw: dict[str, Any], now: float) -> KeyInfo:
    """Build a KeyInfo from python-gnupg's listing of one key (--with-colons fields), as of `now`."""
    trust = raw.get("trust", "")
    expired = trust == "e" or (bool(raw["expires"]) and int(raw["expires"]) <= now)
    enc: list[int | None] = []
    for sub in raw.get("subkey_info", {}).values():
        sub_expires = _epoch(sub.get("expires", ""))
        valid = sub.get("trust") not in ("e", "r") and (sub_expires is None or sub_expires > now)
        if "e" in sub.get("cap", "") and valid:
            enc.append(sub_expires)
    cap = raw.get("cap", "")
    return KeyInfo(
        fingerprint=raw["fingerprint"],
        uids=tuple(raw.get("uids", ())),
        expires=_epoch(raw["expires"]),
        revoked=trust == "r",
        expired=expired,
        encryption_expires=(None if None in enc else max(e for e in enc if e is not None))
        if enc
        else None,
        can_encrypt="E" in cap and bool(enc) and trust not in ("e", "r"),
        can_sign="S" in cap and trust not in ("e", "r"),
    )


class _DeadlineGPG(gnupg.GPG):  # type: ignore[misc]
    """python-gnupg has no timeout; this kills a gpg run that passes its deadline."""

    def __init__(self, timeout: float, **kwargs: Any) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._live: set[subprocess.Popen[bytes]] = set()
        self._live_lock = threading.Lock()
        with self.deadline("start"):  # the constructor runs gpg to learn its version
            super().__init__(**kwargs)

    def _read_response(self, stream: Any, result: Any) -> None:
        """Read gpg's status lines, whatever bytes they carry.

        A signature may carry notations of any bytes (Sequoia puts a binary salt on every
        signature it makes), which gpg prints raw: read strictly as UTF-8, one such line
        killed python-gnupg's reader thread and no message signed by `sq` could be opened.
        Undecodable bytes become U+FFFD; the keywords and fingerprints checked are ASCII.
        """
        stream.errors = "replace"
        super()._read_response(stream, result)

    def _open_subprocess(self, args: Any, passphrase: bool = False) -> subprocess.Popen[bytes]:
        process: subprocess.Popen[bytes] = super()._open_subprocess(args, passphrase)
        timer = threading.Timer(self.timeout, process.kill)
        timer.daemon = True
        timer.start()
        self._local.runs.append((process, timer))
        with self._live_lock:
            self._live.add(process)
        return process

    def kill_all(self) -> None:
        """Stop every gpg run still going (at shutdown)."""
        with self._live_lock:
            for process in self._live:
                process.kill()

    @contextmanager
    def deadline(self, what: str) -> Iterator[None]:
        """Run the gpg calls inside under the deadline; a killed run raises `Timeout`."""
        self._local.runs = []
        try:
            yield
        except OSError as err:
            # gpg died while python-gnupg still fed it (BrokenPipeError): killed by its
            # deadline (below), or it failed on its own, e.g. the disk filled up.
            failed: OSError | None = err
        else:
            failed = None
        finally:
            runs, self._local.runs = self._local.runs, []
            for process, timer in runs:
                timer.cancel()
                if process.poll() is None:
                    process.kill()
                process.wait()
                with self._live_lock:
                    self._live.discard(process)
        if any(process.returncode == -9 for process, _ in runs):
            raise Timeout(
                f"GnuPG took longer than {self.timeout:.0f} s to {what} and was stopped; "
                "it will be tried again (raise gnupg.timeout_seconds for very large files)"
            )
        if failed is not None:
            raise HostTrouble(
                f"GnuPG stopped before it could {what} ({failed.strerror or failed}): "
                "is the spool's disk full? It will be tried again"
            ) from None


class Keyring:
    """The gateway's OpenPGP keyring: its own key and the pinned partner keys."""

    def __init__(self, home: Path, timeout: float, clock: Clock, autostart: bool = True) -> None:
        """`autostart` False: never start gpg-agent, only use one already running (the
        daemon's): a second agent on the same keyring would live outside the service."""
        self.home = home
        self.clock = clock
        self.autostart = autostart
        options = [*_OPTIONS] if autostart else [*_OPTIONS, "--no-autostart"]
        self._gpg = _DeadlineGPG(timeout, gnupghome=str(home), options=options)
        self._gpg.encoding = "utf-8"
        self._gpg.decode_errors = "replace"  # key listings: a user id of any bytes
        self._gpg.buffer_size = 1024 * 1024
        self._agent_lock = threading.Lock()
        self._agent_started = False
        self._listings: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._listing_lock = threading.Lock()

    def _start_agent(self) -> None:
        """Start gpg-agent once, before any signing: gpg runs racing to start it fail.
        Without `autostart`, check instead that one answers."""
        with self._agent_lock:
            if self._agent_started:
                return
            if self.autostart:
                command = ["gpgconf", "--homedir", str(self.home), "--launch", "gpg-agent"]
            else:  # gpg-connect-agent exits 0 either way: a running agent tells its pid
                command = ["gpg-connect-agent", "--homedir", str(self.home), "--no-autostart",
                           "GETINFO pid", "/bye"]  # fmt: skip
            done = subprocess.run(command, capture_output=True, timeout=30, check=False)
            if not self.autostart and not done.stdout.startswith(b"D "):
                raise AgentUnavailable(
                    f"no gpg-agent answers for {self.home}, and this command may not start one "
                    "beside the daemon or for another user: run it as the home's owner "
                    "(sudo -u gateway gateway ...) while the daemon runs, or stop the daemon"
                )
            self._agent_started = True

    @classmethod
    def create(cls, home: Path, timeout: float, clock: Clock) -> Keyring:
        """A new, empty keyring folder (0700) with a passphrase cache that keeps nothing."""
        home.mkdir(mode=0o700)
        (home / "gpg-agent.conf").write_text(_AGENT_CONF)
        return cls(home, timeout, clock)

    def close(self) -> None:
        """Stop any gpg run still going."""
        self._gpg.kill_all()

    def restart_agent(self) -> None:
        """Stop any gpg-agent on this keyring and start this process's own (the daemon's,
        at its start: an agent left by a command lives outside the service's sandbox)."""
        self.stop_agent()
        self._start_agent()

    def stop_agent(self) -> None:
        """Stop the keyring's gpg-agent. Only the holder of the home's work lock does this:
        any other command would pull the agent from under a signing daemon."""
        self._agent_started = False
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
            capture_output=True,
            timeout=30,
            check=False,
        )

    def generate(self, authority: str, days: int) -> str:
        """Create the gateway's own key: Ed25519 to certify and sign, Cv25519 to encrypt."""
        self._start_agent()
        params = self._gpg.gen_key_input(
            key_type="EDDSA",
            key_curve="ed25519",
            key_usage="sign,cert",
            subkey_type="ECDH",
            subkey_curve="cv25519",
            subkey_usage="encrypt",
            expire_date=f"{days}d",
            name_real=f"{authority} exchange gateway",
            name_email=f"gateway@{authority.lower()}.invalid",
            no_protection=True,
        )
        with self._gpg.deadline("create a key"):
            result = self._gpg.gen_key(params)
        if result.returncode != 0 or not result.fingerprint:
            raise CryptoFailed(
                f"GnuPG could not create a key ({result.status}): see `gpg --version`"
            )
        return str(result.fingerprint)

    def scan(self, key_file: Path) -> list[KeyInfo]:
        """The public keys a file holds, without importing them; secret keys are refused."""
        with self._gpg.deadline("read a key file"):
            found = self._gpg.scan_keys(str(key_file))
        if any(k.get("type") == "sec" for k in found):
            raise KeyProblem(
                f"{key_file} holds a secret key: ask the partner for the public key alone, "
                "and tell them their secret key has left their hands"
            )
        return [_key_info(k, self.clock.now()) for k in found]

    def import_pinned(self, key_file: Path, fingerprint: str) -> KeyInfo:
        """Import a partner key only if the file holds exactly that one usable key."""
        found = self.scan(key_file)
        fprs = sorted(k.fingerprint for k in found)
        if fprs != [fingerprint]:
            what = "no OpenPGP key" if not fprs else f"keys {', '.join(fprs)}"
            raise KeyProblem(
                f"{key_file} holds {what}, not exactly {fingerprint}: check the fingerprint "
                "with the partner by phone and ask for a file with that key alone"
            )
        if problem := found[0].problem():
            raise KeyProblem(f"{fingerprint}: {problem}; ask the partner for a current key")
        with self._gpg.deadline("import a key"):
            result = self._gpg.import_keys_file(str(key_file))
        with self._listing_lock:
            self._listings.clear()
        if sorted(set(result.fingerprints)) != [fingerprint] or result.returncode != 0:
            raise KeyProblem(
                f"GnuPG did not import {fingerprint} from {key_file}; nothing was pinned"
            )
        return self.key(fingerprint)

    def key(self, fingerprint: str) -> KeyInfo:
        """The key with this primary fingerprint in the keyring, its validity as of now.

        A key's listing is kept for a few seconds (every seal checks two keys; a gpg
        run costs about 10 ms here); expiry is still judged against the current time,
        and anything that changes the keyring forgets what was kept.
        """
        with self._listing_lock:
            fetched, found = self._listings.get(fingerprint, (-math.inf, []))
        if self.clock.monotonic() - fetched > LISTING_SECONDS:
            with self._gpg.deadline("list keys"):
                found = [
                    k
                    for k in self._gpg.list_keys(keys=[fingerprint])
                    if k["fingerprint"] == fingerprint
                ]
            with self._listing_lock:
                self._listings[fingerprint] = (self.clock.monotonic(), found)
        if len(found) != 1:
            raise KeyProblem(
                f"key {fingerprint} is not in the keyring {self.home}: restore keys/ from backup "
                "or register the partner again"
            )
        return _key_info(found[0], self.clock.now())

    def export_public(self, fingerprint: str) -> str:
        """The armored public key, for partners."""
        self.key(fingerprint)
        with self._gpg.deadline("export a key"):
            text = self._gpg.export_keys([fingerprint], armor=True)
        return str(text)

    def seal(
        self,
        plaintext: IO[bytes] | io.RawIOBase,
        out: Path,
        signer: str,
        recipient: str,
        hide: bool,
    ) -> None:
        """Sign `plaintext` with `signer`, encrypt it to `recipient` alone, write `out`.

        `out` is written in full or not at all: on any failure it is removed. The status
        lines must show a signature by `signer` (SHA-256 or better) and AES-256 encryption
        to `recipient`; `ok` alone proves neither (research/library-pitfalls.md G4).
        """
        for fpr, whose in ((signer, "the gateway's own"), (recipient, "the partner's")):
            if problem := self.key(fpr).problem():
                raise KeyProblem(f"{whose} key {fpr}: {problem}; rotate or renew it, then retry")
        self._start_agent()
        args = [*_SEAL_ARGS, "--throw-keyids"] if hide else list(_SEAL_ARGS)
        try:
            with self._gpg.deadline("seal a package"):
                result = self._gpg.encrypt_file(
                    plaintext,
                    [recipient],
                    sign=signer,
                    always_trust=True,
                    armor=False,
                    output=str(out),
                    extra_args=args,
                )
            _check_sealed(result, signer, recipient)
        except Transient:
            out.unlink(missing_ok=True)
            if shutil.disk_usage(out.parent).free < 1024**2:
                raise HostTrouble(
                    "no space left on the spool's disk: the package waits; free some space"
                ) from None
            raise
        except BaseException:
            out.unlink(missing_ok=True)
            raise

    def encrypt(self, source: Path, out: Path, recipient: str) -> None:
        """Encrypt the file `source` to `recipient` alone (AES-256, no signature) into `out`.

        For backups sent to an offline key: `out` is written in full or not at all.
        """
        if problem := self.key(recipient).problem():
            raise KeyProblem(f"the key {recipient}: {problem}; use a current key")
        try:
            with self._gpg.deadline("encrypt a backup"), source.open("rb") as f:
                result = self._gpg.encrypt_file(f, [recipient], always_trust=True, armor=False,
                                                output=str(out), extra_args=list(_SEAL_ARGS))  # fmt: skip
            lines = _status(result.stderr or "")
            if result.returncode != 0 or not any(
                line[:1] == ["BEGIN_ENCRYPTION"] and line[-1] == _AES256 for line in lines
            ):
                raise CryptoFailed(
                    f"GnuPG did not encrypt to {recipient} (return code {result.returncode}); "
                    "no backup was written"
                )
        except BaseException:
            out.unlink(missing_ok=True)
            raise

    def sign_clear(self, text: io.BytesIO, out: Path, signer: str) -> None:
        """Clearsign `text` with `signer` into `out`, checking GnuPG said it signed with it."""
        self._start_agent()
        try:
            with self._gpg.deadline("sign"):
                result = self._gpg.sign_file(text, keyid=signer, clearsign=True, output=str(out),
                                             extra_args=["--digest-algo", "SHA256"])  # fmt: skip
            created = [line for line in _status(result.stderr or "") if line[0] == "SIG_CREATED"]
            if result.returncode != 0 or len(created) != 1 or created[0][-1] != signer:
                raise CryptoFailed(
                    f"GnuPG did not sign with {signer} (return code {result.returncode})"
                )
        except BaseException:
            out.unlink(missing_ok=True)
            raise

    def open_message(self, source: Path, out: Path, signers: frozenset[str], *,
                     encrypted: bool, max_output: int) -> str:  # fmt: skip
        """Decrypt (where encrypted) and verify `source` into `out`; return the signer.

        Accepted only with exactly one good signature whose primary key is one of
        `signers` (pinned fingerprints) and no bad, expired or revoked one; with
        `encrypted`, only if it was encrypted to us and its integrity check passed.
        `max_output` caps the plaintext, so a compressed bomb cannot fill the disk.
        Anything else raises `Rejected` and leaves no `out`.
        """
        self._start_agent()
        try:
            with self._gpg.deadline("open a message"), source.open("rb") as f:
                result = self._gpg.decrypt_file(
                    f, always_trust=True, output=str(out),
                    extra_args=["--max-output", str(max_output)],
                )  # fmt: skip
            return _check_opened(result, signers, encrypted)
        except BaseException:
            out.unlink(missing_ok=True)
            raise


#: What a bad signature line means, most specific first (gpg reports an unknown key as
#: both ERRSIG and NO_PUBKEY: the operator needs to hear "not pinned").
_BAD_SIGNATURES: Final = {
    "NO_PUBKEY": "it is signed by a key that is not pinned for this partner",
    "REVKEYSIG": "the signer's key is revoked",
    "EXPKEYSIG": "the signer's key has expired",
    "BADSIG": "the signature is bad",
    "EXPSIG": "the signature has expired",
    "ERRSIG": "the signature cannot be checked",
}


def _check_opened(result: Any, signers: frozenset[str], encrypted: bool) -> str:
    if "exceeded --max-output limit" in (result.stderr or ""):
        raise Rejected(
            "it unpacks to more than the size limit (daemon.max_package_bytes): a compression bomb?"
        )
    lines = _status(result.stderr or "")
    keywords = {line[0] for line in lines if line}
    valid = [line for line in lines if line[0] == "VALIDSIG"]
    for keyword, why in _BAD_SIGNATURES.items():
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


def _status(stderr: str) -> list[list[str]]:
    return [line.split()[1:] for line in stderr.splitlines() if line.startswith("[GNUPG:] ")]


def _check_sealed(result: Any, signer: str, recipient: str) -> None:
    lines = _status(result.stderr or "")
    keywords = {line[0] for line in lines if line}
    if "No space left on device" in (result.stderr or ""):
        raise HostTrouble(
            "no space left on the spool's disk: GnuPG could not write the sealed package; "
            "it will be tried again"
        )
    if "INV_RECP" in keywords or "KEY_CONSIDERED" not in keywords:
        raise KeyProblem(
            f"GnuPG will not encrypt to {recipient}: the partner's key may have expired"
        )
    if "INV_SGNR" in keywords:
        raise KeyProblem(
            f"GnuPG will not sign with the gateway's key {signer}: see `gateway keys show`"
        )
    signed = [line for line in lines if line[0] == "SIG_CREATED"]
    encrypted = [line for line in lines if line[0] == "BEGIN_ENCRYPTION"]
    ok = (
        result.ok
        and result.returncode == 0
        and len(signed) == 1
        and signed[0][-1] == signer
        and signed[0][3] in _SHA256_OR_BETTER
        and len(encrypted) == 1
        and encrypted[0][-1] == _AES256
        and "END_ENCRYPTION" in keywords
        and any(line[0] == "KEY_CONSIDERED" and line[1] == recipient for line in lines)
    )
    if not ok:
        said = [line for line in (result.stderr or "").splitlines() if line.startswith("gpg: ")]
        raise CryptoFailed(
            f"GnuPG did not sign with {signer} and encrypt to {recipient} as required "
            f"(return code {result.returncode}{', ' + said[-1] if said else ''}); nothing was sent"
        )
