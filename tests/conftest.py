"""Shared fixtures: short temporary homes, a partner played by plain gpg, leak guards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.adapters.home import Home
from gateway.admin import keys
from gateway.app.gateway import Gateway
from gateway.cli import main
from gateway.core.lifecycle import DUE_TO_SEAL, State
from tests.sshd import SshServer

GATEWAY_ID = "GB-ACRO"
PARTNER_ID = "US-NCB"
T0 = 1_795_000_000.0  # 2026-11-18, a fixed "now" for a clock the test moves


class ManualClock:
    """A `gateway.core.clock.Clock` that moves only when the test moves it, or sleeps on it."""

    def __init__(self, start: float = T0) -> None:
        self._wall, self._mono = start, 1000.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move both clocks on by `seconds`."""
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def set(self, wall: float) -> None:
        """Set the wall clock (the monotonic one moves on by as much, never back)."""
        with self._lock:
            self._mono += max(0.0, wall - self._wall)
            self._wall = wall


def processes_under(path: Path) -> list[int]:
    """Processes whose command line names `path` (e.g. a gpg-agent for a test keyring)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            zombie = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            continue
        if str(path).encode() in cmdline and not zombie:  # a zombie has exited; init reaps it
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (an SFTP transport, a gpg reader...)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (extra := [t for t in threading.enumerate() if t not in before and t.is_alive()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path (gpg-agent's socket path must stay < 108 bytes).

    Fails the test if any process started below it (a gpg-agent, an sshd) outlives it.
    """
    path = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
    yield path
    for keyring in {p.parent for p in path.rglob("pubring.kbx")}:
        subprocess.run(
            ["gpgconf", "--homedir", str(keyring), "--kill", "all"],
            capture_output=True,
            check=False,
        )
    deadline = time.monotonic() + 3  # a killed agent takes a moment to exit
    while (leaked := processes_under(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    described = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                 for pid in leaked if Path(f"/proc/{pid}").exists()]  # fmt: skip
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not leaked, f"processes left running under {path}: {described}"


class PartnerPgp:
    """A partner agency with nothing but the plain `gpg` command line."""

    def __init__(self, home: Path, authority: str = PARTNER_ID, expire: str = "1y") -> None:
        self.home = home
        home.mkdir(mode=0o700)
        self.gpg(
            "--quick-gen-key",
            f"{authority} test <x@{authority.lower()}.invalid>",
            "ed25519",
            "cert,sign",
            expire,
        )
        self.fingerprint = self.colons("--list-keys")[0]
        self.gpg("--quick-add-key", self.fingerprint, "cv25519", "encr", expire)
        self.public_key = home / "public.asc"
        self.public_key.write_bytes(self.gpg("--export", "--armor", self.fingerprint).stdout)

    def close(self) -> None:
        """Stop this keyring's gpg-agent."""
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "all"],
            capture_output=True,
            check=False,
        )

    def gpg(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run plain gpg on the partner's keyring."""
        return subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--passphrase", "",
             "--pinentry-mode", "loopback", *args],
            input=input, capture_output=True, check=check, timeout=60,
        )  # fmt: skip

    def colons(self, *args: str) -> list[str]:
        """Primary fingerprints from a --with-colons listing."""
        out = self.gpg("--with-colons", *args).stdout.decode().splitlines()
        fprs, take = [], False
        for line in out:
            kind = line.split(":")[0]
            if kind in ("pub", "sec"):
                take = True
            elif kind == "fpr" and take:
                fprs.append(line.split(":")[9])
                take = False
        return fprs

    def trust_gateway(self, armored: str) -> None:
        """Import the gateway's public key, as a partner would after checking it by phone."""
        self.gpg("--import", input=armored.encode())

    def decrypt(self, path: Path) -> tuple[bytes, list[str]]:
        """Decrypt and verify a package; return the plaintext and the status lines."""
        status = self.home / "status.txt"
        done = self.gpg("--status-file", str(status), "--decrypt", str(path), check=False)
        lines = status.read_text().splitlines()
        assert done.returncode == 0, f"gpg could not open the package: {done.stderr.decode()}"
        return done.stdout, [line.removeprefix("[GNUPG:] ") for line in lines]


@pytest.fixture
def partner_pgp(short_tmp: Path) -> Iterator[PartnerPgp]:
    """The partner's own gpg keyring, in the test's folder."""
    pgp = PartnerPgp(short_tmp / "partner-gnupg")
    yield pgp
    pgp.close()


@pytest.fixture
def home(short_tmp: Path) -> Home:
    """A freshly initialised gateway home."""
    home = Home(short_tmp / "gw")
    keys.init(home, GATEWAY_ID, "tester").close()
    return home


def gateway(home: Home, actor: str = "tester") -> Gateway:
    """Open the gateway of a home (the caller closes it)."""
    return Gateway(home, actor)


def cli(home: Home | Path, *args: str) -> Result:
    """Run `gateway --home HOME ARGS` in-process; stdout and stderr kept apart."""
    root = home.root if isinstance(home, Home) else home
    return CliRunner().invoke(main, ["--home", str(root), *args], catch_exceptions=False)


@pytest.fixture
def server(short_tmp: Path) -> Iterator[SshServer]:
    """The partner's SFTP server: a real sshd on loopback."""
    with SshServer(short_tmp / "sshd") as server:
        yield server


def add_partner(
    home: Home, pgp: PartnerPgp, server: SshServer, host_key: str | None = None
) -> None:
    """Register the partner and let the gateway's SSH key in on its server."""
    result = cli(home, "partner", "add", PARTNER_ID, "--openpgp-key", str(pgp.public_key),
                 "--fingerprint", pgp.fingerprint, "--push", server.url,
                 "--host-key", host_key or server.host_key_line, "--reason", "test partner")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    server.authorize(home.ssh_identity_pub.read_text())
    pgp.trust_gateway(cli(home, "keys", "export", "--openpgp").stdout)


@pytest.fixture
def exchange(
    home: Home, partner_pgp: PartnerPgp, server: SshServer
) -> tuple[Home, PartnerPgp, SshServer]:
    """A gateway with the partner registered as a push partner."""
    add_partner(home, partner_pgp, server)
    return home, partner_pgp, server


def send(home: Home, path: Path, *extra: str) -> str:
    """`gateway send` a file to the partner; return the package id."""
    result = cli(home, "send", str(path), "--to", PARTNER_ID, "--kind", "conviction", *extra)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def run_once(home: Home) -> None:
    """One pass of the daemon's work, as `gateway run --once` does it."""
    with gateway(home, "daemon") as gw:
        gw.run_once()


def seal_due(gw: Gateway) -> None:
    """Seal every received package that is due, as the daemon's workers would."""
    for package in gw.ledger.due(DUE_TO_SEAL, gw.clock.now()):
        gw.steps.seal(package)


def state(home: Home, pid: str) -> State:
    """The package's state in the ledger."""
    with gateway(home) as gw:
        return gw.ledger.package(pid).state


def remote_files(server: SshServer) -> list[str]:
    """Every name in the partner's upload folder, hidden ones included."""
    return sorted(os.listdir(server.upload))


def set_setting(home: Home, name: str, value: int | str) -> None:
    """Change one setting in the home's gateway.toml."""
    section, key = name.split(".")
    lines, current = home.settings.read_text().splitlines(), ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(f"{key} = "):
            lines[i] = f"{key} = {json.dumps(value)}"
            home.settings.write_text("\n".join(lines) + "\n")
            return
    raise AssertionError(f"no setting {name}")
