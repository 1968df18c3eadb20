"""What the tests share besides fixtures: a clock they move, partners played by plain gpg,
template homes, the gateway and its CLI driven in-process, and packages built by hand.

Test modules import from here (and from the harnesses `tests.sshd` and
`tests.faultproxy`), never from one another; tests/core/test_layering.py checks it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from click.testing import CliRunner, Result

import gateway.cli as gateway_cli
from gateway.adapters.home import Home
from gateway.admin import keys
from gateway.app.gateway import Gateway
from gateway.cli import main
from gateway.core.clock import Clock
from gateway.core.lifecycle import DUE_TO_SEAL, State
from gateway.core.model import Event, Package
from gateway.core.names import new_ulid
from tests.sshd import SshServer

GATEWAY_ID = "GB-ACRO"
PARTNER_ID = "US-NCB"
FORGER_ID = "FR-CJN"  # a partner agency's keyring that is never pinned
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


def stop_agents(path: Path) -> None:
    """Stop the gpg-agent of every keyring below `path`."""
    for keyring in {p.parent for p in path.rglob("pubring.kbx")}:
        subprocess.run(
            ["gpgconf", "--homedir", str(keyring), "--kill", "all"],
            capture_output=True,
            check=False,
        )


def wait_for(condition: Callable[[], bool], seconds: float = 60, what: str = "condition") -> None:
    """Poll until `condition()` holds, or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- partners and homes ------------------------------------------------------------------


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

    @classmethod
    def copy(cls, original: PartnerPgp, home: Path) -> PartnerPgp:
        """A copy at `home` of `original`'s keyring: the same key, without making one."""
        copy_tree(original.home, home)
        pgp = cls.__new__(cls)
        pgp.home, pgp.fingerprint, pgp.public_key = home, original.fingerprint, home / "public.asc"
        return pgp

    def close(self) -> None:
        """Stop this keyring's gpg-agent."""
        stop_agents(self.home)

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


#: What a copy leaves out: a stopped gpg-agent's sockets, and lock files. SQLite's -wal and
#: -shm files are only left by a connection still open, which a template never has.
LEFTOVERS = shutil.ignore_patterns("S.*", "*.lock", ".#lk*", "*-wal", "*-shm")


def copy_tree(source: Path, target: Path) -> None:
    """Copy a home or keyring with its modes (0700 folders, 0600 keys)."""
    shutil.copytree(source, target, symlinks=True, ignore=LEFTOVERS)


class Templates:
    """Gateway homes and partner keyrings made once per session, copied for each test.

    Making a home generates an OpenPGP key and two SSH keys, and a partner keyring its own
    key: together about 0.2 s per test that asks for them; a copy takes about 5 ms. Tests
    that need a key of their own (another expiry, a second key for one partner) still make
    one with `PartnerPgp(...)`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._homes: dict[str, Home] = {}
        self._keyrings: dict[str, PartnerPgp] = {}

    def home(self, gateway_id: str, target: Path) -> Home:
        """A copy at `target` of a freshly initialised home of gateway `gateway_id`."""
        if gateway_id not in self._homes:
            made = Home(self.root / gateway_id)
            keys.init(made, gateway_id, "tester").close()
            self._settle(made.root)
            self._homes[gateway_id] = made
        copy_tree(self._homes[gateway_id].root, target)
        return Home(target)

    def partner(self, target: Path, authority: str = PARTNER_ID) -> PartnerPgp:
        """A copy at `target` of partner `authority`'s keyring, with its one key."""
        if authority not in self._keyrings:
            pgp = PartnerPgp(self.root / f"pgp-{authority}", authority)
            self._settle(pgp.home)
            self._keyrings[authority] = pgp
        return PartnerPgp.copy(self._keyrings[authority], target)

    def _settle(self, path: Path) -> None:
        """Stop the template's gpg-agent and check nothing of it is left to copy by mistake."""
        stop_agents(path)
        deadline = time.monotonic() + 3  # a killed agent takes a moment to exit
        while processes_under(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not processes_under(path), f"a process of the template {path} is still running"
        assert not list(path.rglob("*-wal")), f"the template {path} has a ledger still open"

    def close(self) -> None:
        """Stop anything still running from the templates and remove them."""
        stop_agents(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


# -- the gateway and its CLI, in-process -------------------------------------------------


def gateway(home: Home, actor: str = "tester", clock: Clock | None = None) -> Gateway:
    """Open the gateway of a home, on `clock` if given (the caller closes it)."""
    return Gateway(home, actor, clock)


def cli(
    home: Home | Path, *args: str, clock: Clock | None = None, actor: str | None = None
) -> Result:
    """Run `gateway --home HOME ARGS` in-process; stdout and stderr kept apart.

    The CLI builds its gateway on the system's clock; with `clock` the command's gateway
    reads that one instead, so a test that moves time can still use the commands. With
    `actor`, the command acts as that OS user (a second operator, for four-eyes).
    """
    root = home.root if isinstance(home, Home) else home
    run = functools.partial(
        CliRunner().invoke, main, ["--home", str(root), *args], obj=clock, catch_exceptions=False
    )
    if actor is None:
        return run()
    with mock.patch.object(gateway_cli, "actor", lambda: actor):
        return run()


#: The regimes test partners are registered for: every kind, under the shipped template
#: memorandum first (the default), and convictions under the 1959 Convention too.
TEST_REGIMES = ("--regime", "MOU-TEMPLATE", "--regime", "CoE-1959-Art22")

#: A well-formed SSH host key for a push partner that is never reached.
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN7qlhZ8Npb6Y/RTteraNzlFqfcjGYSG9hQDIU3Fcdjk"


def partner_add(home: Home, key_file: Path, fingerprint: str, host_key: str = HOST_KEY,
                partner: str = PARTNER_ID) -> tuple[int, str]:  # fmt: skip
    """`partner add` with a push endpoint; return the exit code and stderr."""
    result = cli(home, "partner", "add", partner, "--openpgp-key", str(key_file),
                 "--fingerprint", fingerprint, "--push", "sftp://gbacro@127.0.0.1:2222",
                 "--host-key", host_key, *TEST_REGIMES, "--reason", "MoU 2026")  # fmt: skip
    return result.exit_code, result.stderr


def add_partner(
    home: Home, pgp: PartnerPgp, server: SshServer, host_key: str | None = None
) -> None:
    """Register the partner and let the gateway's SSH key in on its server."""
    result = cli(home, "partner", "add", PARTNER_ID, "--openpgp-key", str(pgp.public_key),
                 "--fingerprint", pgp.fingerprint, "--push", server.url,
                 "--host-key", host_key or server.host_key_line, *TEST_REGIMES,
                 "--reason", "test partner")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    server.authorize(home.ssh_identity_pub.read_text())
    pgp.trust_gateway(cli(home, "keys", "export", "--openpgp").stdout)


def send(home: Home, path: Path, *extra: str, clock: Clock | None = None) -> str:
    """`gateway send` a file to the partner; return the package id."""
    result = cli(home, "send", str(path), "--to", PARTNER_ID, "--kind", "conviction", *extra,
                 clock=clock)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def run_once(home: Home, clock: Clock | None = None) -> None:
    """One pass of the daemon's work, as `gateway run --once` does it."""
    with gateway(home, "daemon", clock) as gw:
        gw.run_once()


def seal_due(gw: Gateway) -> None:
    """Seal every received package that is due, as the daemon's workers would."""
    for package in gw.ledger.due(DUE_TO_SEAL, gw.clock.now()):
        gw.steps.seal(package)


def state(home: Home, pid: str) -> State:
    """The package's state in the ledger."""
    with gateway(home) as gw:
        return gw.ledger.package(pid).state


def retry_due(home: Home, pid: str, clock: ManualClock) -> None:
    """Time passes: move `clock` to the package's next attempt, which is then due."""
    with gateway(home) as gw:
        due = gw.ledger.package(pid).next_attempt_at
    assert due is not None, f"{pid} waits for no retry"
    clock.set(max(clock.now(), due))


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


class DaemonProcess:
    """`gateway run` in its own process, its log in a file."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.log = home.root / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        """Start the daemon and wait until it says it has started."""
        started = self.started()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--home", str(self.home.root), "run"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_for(lambda: self.started() > started, 30, "the daemon to start")
        return self

    def started(self) -> int:
        return self.log.read_text().count("daemon started") if self.log.exists() else 0

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(15)


# -- what a partner leaves for the gateway, built by hand --------------------------------

PAYLOAD = b"<response>no convictions recorded</response>\n"
PAYLOAD_NAME = "response.xml"


@dataclasses.dataclass
class Desk:
    """The partner's desk: its gpg, a forger's gpg, its SFTP server and the gateway it talks to."""

    home: Home
    pgp: PartnerPgp
    forger: PartnerPgp
    server: SshServer
    gateway_fpr: str
    tmp: Path


def sha256(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def now() -> str:
    """UTC now as the contract writes times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def partner_pid() -> str:
    """A fresh package id of the partner's."""
    return f"{PARTNER_ID}-{new_ulid(time.time())}"


def quarantined(home: Home) -> list[tuple[dict[str, Any], bytes]]:
    """Every quarantine entry: its reason file and the bytes kept."""
    entries = []
    for reason in sorted(home.quarantine.glob("*.reason.json")):
        report = json.loads(reason.read_text())
        kept = home.quarantine / report["id"]
        entries.append((report, kept.read_bytes() if kept.is_file() else b""))
    return entries


def only_quarantined(home: Home) -> tuple[dict[str, Any], bytes]:
    """The one quarantine entry there must be."""
    entries = quarantined(home)
    assert len(entries) == 1, [report for report, _ in entries]
    return entries[0]


def receipt_json(pid: str, ciphertext_sha256: str, **changes: Any) -> bytes:
    """A receipt's JSON as a partner writes it; `changes` set or (with None) drop fields."""
    doc = {"schema": "gateway-receipt/1", "package_id": pid, "from": PARTNER_ID,
           "to": GATEWAY_ID, "received_at": now(), "ciphertext_sha256": ciphertext_sha256,
           "disposition": "accepted"}  # fmt: skip
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not None}, indent=2).encode()


def sign(pgp: PartnerPgp, data: bytes, form: str = "armor", gateway_fpr: str = "") -> bytes:
    """Sign `data` with plain gpg in one of the receipt forms of SPEC section 5."""
    args = {"armor": ["--sign", "--armor"], "clearsign": ["--clearsign"], "binary": ["--sign"],
            "encrypted": ["--recipient", gateway_fpr, "--sign", "--encrypt"]}[form]  # fmt: skip
    return pgp.gpg("--local-user", pgp.fingerprint, *args, "--output", "-", input=data).stdout


def delivered(desk: Desk, name: str = "notice.xml", clock: Clock | None = None) -> tuple[str, str]:
    """Send a package to the partner and deliver it; its id and the sha256 of its .pgp."""
    source = desk.tmp / name
    source.write_bytes(b"<conviction>fictional</conviction>\n")
    pid = send(desk.home, source, clock=clock)
    run_once(desk.home, clock)
    assert state(desk.home, pid) is State.DELIVERED
    return pid, sha256((desk.server.upload / f"{pid}.pgp").read_bytes())


def leave(desk: Desk, name: str, data: bytes) -> Path:
    """Put a file in the partner's download folder, where the gateway fetches."""
    path = desk.server.download / name
    path.write_bytes(data)
    return path


def manifest(desk: Desk, pid: str, content: bytes = PAYLOAD, **changes: Any) -> dict[str, Any]:
    """The manifest a partner writes for `content`; `changes` replace fields."""
    doc = {"schema": "gateway-envelope/1", "package_id": pid, "kind": "response",
           "sender": {"id": PARTNER_ID, "key": desk.pgp.fingerprint},
           "recipient": {"id": GATEWAY_ID, "key": desk.gateway_fpr}, "created_at": now(),
           "payload": {"name": PAYLOAD_NAME, "size": len(content), "sha256": sha256(content)}}  # fmt: skip
    doc.update(changes)
    return doc


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> tuple[tarfile.TarInfo, bytes]:  # fmt: skip
    """One tar member: a regular file, or a link (`kind`) whose target is `data`."""
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = kind, int(time.time()), 0o600
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    else:
        info.linkname, data = data.decode(), b""
    return info, data


def tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A POSIX tar of these members, in this order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def sparse_tar() -> bytes:
    """A tar whose PAX header `GNU.sparse.map` makes Python's tarfile raise ValueError."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        info.pax_headers = {"GNU.sparse.map": "1,x", "GNU.sparse.major": "0",
                            "GNU.sparse.minor": "1"}  # fmt: skip
        archive.addfile(info, io.BytesIO(b"{}"))
    return buf.getvalue()


def seal(desk: Desk, plain: bytes, signer: PartnerPgp | None = None, encrypt: bool = True) -> bytes:
    """Sign (as the partner, unless `signer`) and encrypt to the gateway, as docs/partners.md 5."""
    pgp = signer or desk.pgp
    to = ["--recipient", desk.gateway_fpr, "--encrypt"] if encrypt else []
    return pgp.gpg("--local-user", pgp.fingerprint, "--compress-algo", "none", "--cipher-algo",
                   "AES256", "--digest-algo", "SHA256", *to, "--sign", "--output", "-",
                   input=plain).stdout  # fmt: skip


def events(home: Home, pid: str | None = None) -> list[Event]:
    """The audit trail, for one package or all."""
    with gateway(home) as gw:
        return list(gw.ledger.events(pid))


def actions(home: Home, pid: str) -> list[str]:
    """The actions recorded for one package, in order."""
    return [e.action for e in events(home, pid)]


def package(home: Home, pid: str) -> Package:
    """One package's ledger row."""
    with gateway(home) as gw:
        return gw.ledger.package(pid)


def open_our_receipt(desk: Desk, pid: str) -> dict[str, Any]:
    """Decrypt and verify the gateway's receipt in server.upload with plain gpg; its JSON."""
    plain, status = desk.pgp.decrypt(desk.server.upload / f"{pid}.receipt")
    assert any(line.startswith("VALIDSIG ") and line.endswith(f" {desk.gateway_fpr}")
               for line in status), "signed by the gateway's key"  # fmt: skip
    assert "DECRYPTION_OKAY" in status
    doc: dict[str, Any] = json.loads(plain)
    return doc


def envelope(doc: dict[str, Any], payload: bytes = PAYLOAD, name: str = PAYLOAD_NAME) -> bytes:
    """The tar of SPEC section 4: manifest.json then payload/<name>."""
    return tar(member("manifest.json", json.dumps(doc, indent=2).encode()),
               member(f"payload/{name}", payload))  # fmt: skip


# -- the record scripts/faults reads ------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What one fault or hostile-input test injected and what it found; the `tally` fixture
    records it (pytest's `record_property`) and scripts/faults sums it into its report."""

    faults: list[str] = dataclasses.field(default_factory=list)
    hostile: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (what, how many)
    packages: int = 0
    lost: int = 0
    duplicated: int = 0

    def fault(self, what: str) -> None:
        """A fault was injected."""
        self.faults.append(what)

    def hostile_input(self, what: str, count: int = 1) -> None:
        """`count` hostile inputs of one kind were offered."""
        self.hostile.append((what, count))

    def packages_checked(self, count: int, lost: int, duplicated: int) -> None:
        """Packages whose end state was checked, and how many of them were lost or doubled."""
        self.packages += count
        self.lost += lost
        self.duplicated += duplicated
        assert lost == 0, f"{lost} package(s) lost"
        assert duplicated == 0, f"{duplicated} extra cop(ies) on the partner"
