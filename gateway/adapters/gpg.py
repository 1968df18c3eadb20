"""OpenPGP through GnuPG: the only module that imports `gnupg`.

The keyring (`keys/gnupg`) holds the gateway's own key and the partners' keys, each
pinned by its full fingerprint; nothing is ever looked up by user id or fetched from
a key server. Every GnuPG run has a deadline and every result is checked for what it
must say, not only for `ok` (research/library-pitfalls.md G3-G6).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import select
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

import gnupg

from gateway.adapters.passphrase import Passphrase
from gateway.core.clock import Clock
from gateway.core.errors import (
    AgentUnavailable,
    CryptoFailed,
    HostTrouble,
    KeyProblem,
    Timeout,
    Transient,
)
from gateway.core.gpgstatus import (
    AES256,
    Run,
    check_opened,
    check_sealed,
    check_signed,
    passphrase_trouble,
    status,
)

# Options on every run: no network look-ups, no chatter that could hide status lines, and
# never a pinentry program: a protected key's passphrase comes from a pipe gpg is given
# (`--passphrase-fd`) or not at all (a daemon has no one at a terminal to ask).
_OPTIONS: Final = ["--no-auto-key-retrieve", "--auto-key-locate", "clear", "--no-greeting",
                   "--pinentry-mode", "loopback"]  # fmt: skip
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
# gpg-agent keeps no passphrase, so every signature and decryption with a protected key
# runs its key derivation again. Calibrated by the agent (100 ms when it protected the
# key, 379,860,992 bytes of SHA-1 here), that made each seal take 0.8-2.2 s (median 1.4 s,
# 2 loaded cores) against 0.01-0.02 s unprotected; with 1 MiB it took 0.02 s. The
# passphrase, not the derivation, carries the strength: it is required to be long
# (gateway.adapters.passphrase.MIN_CHARACTERS) and meant to be random.
_S2K_COUNT: Final = "s2k-count 1048576\n"
_AGENT_CONF: Final = "default-cache-ttl 0\nmax-cache-ttl 0\n" + _S2K_COUNT
LISTING_SECONDS: Final = 10.0
_CHUNK: Final = 1024 * 1024  # per write to gpg's stdin


def _no_passphrase() -> Passphrase | None:
    return None


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


def _fileno(source: IO[bytes] | io.RawIOBase) -> int | None:
    try:
        return source.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _memory_file(data: memoryview) -> int:
    """An anonymous file in memory holding `data`, read from its start."""
    fd = os.memfd_create("gpg-input", os.MFD_CLOEXEC)
    try:
        while data:
            data = data[os.write(fd, data) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _ended(process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Sleep until `process` ends (one wake-up, on its pidfd) or `timeout` passes; say which."""
    pidfd = os.pidfd_open(process.pid)
    try:
        waiter = select.poll()
        waiter.register(pidfd, select.POLLIN)
        return bool(waiter.poll(math.ceil(timeout * 1000)))
    finally:
        os.close(pidfd)


class _Feeder(threading.Thread):
    """Copies a source that is not a file into gpg's stdin; keeps the source's error.

    A gpg that stops reading (a key it refuses) breaks the pipe: the copy stops there,
    and gpg's status lines say why, as python-gnupg let them (raised here, a refused key
    on a package larger than the pipe's 64 KiB would read as a full disk and be retried).
    """

    def __init__(self, source: IO[bytes] | io.RawIOBase, stdin: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.source, self.stdin = source, stdin
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            while chunk := self.source.read(_CHUNK):
                self.stdin.write(chunk)
        except BrokenPipeError:
            pass  # gpg stopped reading: its status lines say why
        except Exception as err:  # raised on the caller's thread once gpg has ended
            self.error = err
        finally:
            with contextlib.suppress(OSError):  # the last bytes flushed into a broken pipe
                self.stdin.close()


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
        self.watch(process)
        return process

    def watch(self, process: subprocess.Popen[bytes], timer: bool = True) -> None:
        """Put a gpg run started inside `deadline` under it (and under `kill_all`); without
        `timer`, the caller kills the run at its deadline."""
        killer = threading.Timer(self.timeout, process.kill) if timer else None
        if killer is not None:
            killer.daemon = True
            killer.start()
        self._local.runs.append((process, killer))
        with self._live_lock:
            self._live.add(process)

    def run(
        self, args: list[str], source: IO[bytes] | io.RawIOBase, passphrase: str | None = None
    ) -> Run:
        """One gpg run on `source` with python-gnupg's command line, driven directly.

        python-gnupg starts three threads per run (feed stdin, read stdout, read stderr)
        and parses each status line as it comes. On a 4 KiB package that cost more CPU
        than gpg itself (docs/performance.md). Here gpg reads a source that is a file as
        its stdin as it is, and bytes in memory (`io.BytesIO`) from a memory file filled
        first; any other source is fed through a pipe by one thread of its own. Its status
        lines (fd 2) go to a memory file too, read once gpg has ended: this thread sleeps
        until then (`_ended`) instead of waking for each line, and gpg itself never waits
        on a pipe. The output goes where `--output` says. Call inside `deadline`, which
        turns a run killed at its time into `Timeout`. Undecodable bytes become U+FFFD,
        as in `_read_response`. A `passphrase` reaches gpg on a pipe of its own
        (`--passphrase-fd`, with loopback pinentry): stdin is the data, and a command line
        or an environment is readable by others.
        """
        status = os.memfd_create("gpg-status", os.MFD_CLOEXEC)
        given: list[str] = []
        secret = None
        handed: list[int] = []  # closed here once gpg has started: its copies are its own
        try:
            if passphrase is not None:
                secret, writer = os.pipe()
                handed.append(secret)
                with os.fdopen(writer, "wb") as pipe:  # a line: far less than a pipe's buffer
                    pipe.write(passphrase.encode() + b"\n")
                given = ["--passphrase-fd", str(secret)]
            stdin = _fileno(source)
            if stdin is None and isinstance(source, io.BytesIO):
                stdin = _memory_file(source.getbuffer())
                handed.append(stdin)
            process = subprocess.Popen(
                self.make_args([*given, *args], False),
                stdin=subprocess.PIPE if stdin is None else stdin,
                stdout=subprocess.DEVNULL,
                stderr=status,
                env=self.env,
                pass_fds=() if secret is None else (secret,),
            )
        except BaseException:
            os.close(status)
            raise
        finally:
            for fd in handed:
                os.close(fd)
        with os.fdopen(status, "rb") as lines:
            self.watch(process, timer=False)  # killed here at its deadline: no timer thread
            feeder = None if process.stdin is None else _Feeder(source, process.stdin)
            if not _ended(process, self.timeout):
                process.kill()  # `deadline` sees the kill and raises Timeout
            process.wait()
            if feeder is not None:
                feeder.join()
                if feeder.error is not None:
                    raise feeder.error
            lines.seek(0)
            return Run(process.returncode, lines.read().decode("utf-8", errors="replace"))

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
            # gpg died while python-gnupg still fed it, or a source failed as it was read
            # (a `_Feeder`'s error): killed by its deadline (below), or the host's trouble,
            # e.g. the disk filled up.
            failed: OSError | None = err
        else:
            failed = None
        finally:
            runs, self._local.runs = self._local.runs, []
            for process, killer in runs:
                if killer is not None:
                    killer.cancel()
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

    def __init__(self, home: Path, timeout: float, clock: Clock, autostart: bool = True,
                 passphrase: Callable[[], Passphrase | None] = _no_passphrase) -> None:  # fmt: skip
        """`autostart` False: never start gpg-agent, only use one already running (the
        daemon's): a second agent on the same keyring would live outside the service.
        `passphrase` is asked for each time a secret key is used (None: not protected)."""
        self.home = home
        self.clock = clock
        self.autostart = autostart
        self._passphrase = passphrase
        self._options = [*_OPTIONS] if autostart else [*_OPTIONS, "--no-autostart"]
        self._gpg = _DeadlineGPG(timeout, gnupghome=str(home), options=self._options)
        self._gpg.encoding = "utf-8"
        self._gpg.decode_errors = "replace"  # key listings: a user id of any bytes
        self._gpg.buffer_size = _CHUNK
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

    def _secret(self) -> str | None:
        """The passphrase to hand GnuPG (on a pipe: `_DeadlineGPG.run`, python-gnupg), or None."""
        given = self._passphrase()
        return given.reveal() if given is not None else None

    def _loopback(
        self, args: list[str], passphrase: Passphrase | None, what: str
    ) -> list[list[str]]:
        """Run gpg with `args`, answering every passphrase question from its stdin; its
        status lines. The passphrase (none: empty) is written to gpg's stdin (fd 0) and
        loopback pinentry sends gpg-agent's questions back to gpg: it is never on a command
        line or in an environment. Raises `CryptoFailed` if gpg fails."""
        self._start_agent()
        command = ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--yes",
                   "--status-fd", "2", *self._options, "--passphrase-fd", "0", *args]  # fmt: skip
        secret = passphrase.reveal() if passphrase else ""
        try:
            done = subprocess.run(command, input=(secret + "\n").encode(), capture_output=True,
                                  timeout=self._gpg.timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            raise Timeout(f"GnuPG took longer than {self._gpg.timeout:.0f} s to {what} and "
                          "was stopped; run the command again") from None  # fmt: skip
        lines = status(done.stderr.decode(errors="replace"))
        passphrase_trouble(lines)
        if done.returncode != 0:
            raise CryptoFailed(f"GnuPG could not {what} (return code {done.returncode}): "
                               "run the command again, and check `gpg --version`")  # fmt: skip
        with self._listing_lock:
            self._listings.clear()
        return lines

    def generate(self, authority: str, days: int, passphrase: Passphrase | None = None) -> str:
        """Create the gateway's own key: Ed25519 to certify and sign, Cv25519 to encrypt.

        With `passphrase`, both are protected by it from the start. (GnuPG's batch key
        parameters with a `Passphrase:` line failed about one time in two here: gpg-agent
        forgets the new passphrase at once with a cache time of 0, before the subkey is
        bound; `--quick-add-key` is given it again.)
        """
        uid = f"{authority} exchange gateway <gateway@{authority.lower()}.invalid>"
        lines = self._loopback(["--quick-gen-key", uid, "ed25519", "sign,cert", f"{days}d"],
                               passphrase, "create a key")  # fmt: skip
        made = [line[2] for line in lines if line[0] == "KEY_CREATED" and line[1] in ("P", "B")]
        if len(made) != 1:
            raise CryptoFailed("GnuPG did not report the key it created: see `gpg --version`")
        lines = self._loopback(["--quick-add-key", made[0], "cv25519", "encr", f"{days}d"],
                               passphrase, "add an encryption subkey")  # fmt: skip
        if not any(line[0] == "KEY_CREATED" and line[1] == "S" for line in lines):
            raise CryptoFailed("GnuPG did not report the subkey it created: see `gpg --version`")
        return made[0]

    def _keygrips(self, fingerprint: str) -> list[str]:
        with self._gpg.deadline("list keys"):
            found = [k for k in self._gpg.list_keys(True, keys=[fingerprint])
                     if k["fingerprint"] == fingerprint]  # fmt: skip
        if len(found) != 1:
            raise KeyProblem(f"the secret key {fingerprint} is not in the keyring {self.home}: "
                             "restore keys/ from backup")  # fmt: skip
        subkeys = found[0].get("subkey_info", {}).values()
        return [found[0]["keygrip"], *(sub["keygrip"] for sub in subkeys if sub.get("keygrip"))]

    def protected(self, fingerprint: str | None = None) -> bool:
        """Whether the secret key `fingerprint` needs a passphrase for every one of its parts
        (a `--passwd` cut short may have protected the primary key and not the encryption
        subkey, which opens every inbound package); else whether any secret key here does.

        Read from gpg-agent's key files: a protected key is stored as
        `protected-private-key`, one on a smartcard as a `shadowed-private-key` stub whose
        PIN the agent asks for the same way.
        """
        folder = self.home / "private-keys-v1.d"
        grips = None if fingerprint is None else self._keygrips(fingerprint)
        files = (
            sorted(folder.glob("*.key")) if grips is None else [folder / f"{g}.key" for g in grips]
        )
        found = []
        for path in files:
            try:
                data = path.read_bytes()[:4096]
            except FileNotFoundError:
                continue
            found.append(b"(protected-private-key" in data or b"(shadowed-private-key" in data)
        return bool(found) and (all(found) if fingerprint is not None else any(found))

    def prepare_protection(self) -> None:
        """Give a keyring made before keys were protected the key derivation cost of
        `_AGENT_CONF`, and stop its agent so that the next one reads it. Only the holder
        of the home's work lock does this (it stops the agent)."""
        conf = self.home / "gpg-agent.conf"
        text = conf.read_text() if conf.exists() else ""
        if "s2k-count" not in text:
            conf.write_text(text + _S2K_COUNT)
            self.stop_agent()

    def protect(self, fingerprint: str, passphrase: Passphrase) -> None:
        """Put `passphrase` on the unprotected secret key `fingerprint` (all its subkeys)."""
        self._loopback(["--passwd", fingerprint], passphrase, f"protect the key {fingerprint}")
        if not self.protected(fingerprint):
            raise CryptoFailed(f"GnuPG did not protect the key {fingerprint}: run the command "
                               "again, and check `gpg --version`")  # fmt: skip

    def check_passphrase(self, fingerprint: str) -> None:
        """Sign a few bytes with `fingerprint`: `PassphraseWrong` if its passphrase fails,
        `CryptoFailed` if GnuPG signed with no key or another one."""
        scratch = self.home / ".passphrase-check.asc"
        try:
            self.sign_clear(io.BytesIO(b"passphrase check"), scratch, fingerprint)
        finally:
            scratch.unlink(missing_ok=True)

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
                result = self._gpg.run(
                    ["--encrypt", "--recipient", recipient, *_output(out),
                     "--sign", *_signer(signer), "--trust-model", "always", *args],
                    plaintext,
                    self._secret(),
                )  # fmt: skip
            check_sealed(result, signer, recipient)
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
            lines = status(result.stderr or "")
            if result.returncode != 0 or not any(
                line[:1] == ["BEGIN_ENCRYPTION"] and line[-1] == AES256 for line in lines
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
                result = self._gpg.run(
                    ["-sa", "--clearsign", *_signer(signer), *_output(out),
                     "--digest-algo", "SHA256"],
                    text,
                    self._secret(),
                )  # fmt: skip
            check_signed(result, signer)
        except BaseException:
            out.unlink(missing_ok=True)
            raise

    def open_message(self, source: Path, out: Path, signers: frozenset[str], *,
                     encrypted: bool, max_output: int, decrypts: bool = True) -> str:  # fmt: skip
        """Decrypt (where encrypted) and verify `source` into `out`; return the signer.

        Accepted only with exactly one good signature whose primary key is one of
        `signers` (pinned fingerprints) and no bad, expired or revoked one; with
        `encrypted`, only if it was encrypted to us and its integrity check passed.
        `max_output` caps the plaintext, so a compressed bomb cannot fill the disk.
        Anything else raises `Rejected` and leaves no `out`. Without `decrypts` (a message
        that is only ever signed, such as a checkpoint) no passphrase is asked for.
        """
        self._start_agent()
        try:
            with self._gpg.deadline("open a message"), source.open("rb") as f:
                result = self._gpg.run(
                    ["--decrypt", *_output(out), "--trust-model", "always",
                     "--max-output", str(max_output)],
                    f,
                    self._secret() if decrypts else None,
                )  # fmt: skip
            return check_opened(result, signers, encrypted)
        except BaseException:
            out.unlink(missing_ok=True)
            raise


def _signer(fingerprint: str) -> list[str]:
    """gpg's options to sign with this key and no other.

    `--local-user`, not `--default-key`: given a key it holds no secret part of, gpg
    refuses (`INV_SGNR`), where with `--default-key` it warned, signed with another
    secret key and exited 0 (only the status check caught it); and it cost the agent
    0.53 - 0.60 ms of CPU per small package against 0.87 (150 seals each way, this machine).
    """
    return ["--local-user", fingerprint]


def _output(out: Path) -> list[str]:
    """python-gnupg's `--output`: `--yes` first when the file is there, or gpg would ask."""
    return ["--yes", "--output", str(out)] if out.exists() else ["--output", str(out)]
