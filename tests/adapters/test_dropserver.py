"""The drop server, end to end: a real gateway serving a pull partner, driven by OpenSSH.

The partner AU-AFP logs in with the real `sftp`/`ssh` clients (and with paramiko's client
where OpenSSH cannot say what is tested: partial reads, cut uploads, odd names). Between
client actions the test thread does one round of the daemon's work with the partner.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.sftp import int64
from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters.dropserver import INFLIGHT, DropServer
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.sftp import CIPHERS, MACS
from gateway.app.gateway import Gateway
from gateway.core.clock import Clock
from gateway.core.lifecycle import State
from tests.helpers import (
    GATEWAY_ID,
    TEST_REGIMES,
    ManualClock,
    PartnerPgp,
    Tally,
    Templates,
    cli,
    gateway,
    seal_due,
    set_setting,
    wait_for,
)

PULL_ID = "AU-AFP"
OTHER_ID = "FR-CJN"
TIMEOUT = 30.0


def keygen(path: Path) -> Path:
    """A fresh unencrypted ed25519 key pair; returns the private key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True, capture_output=True, timeout=30)  # fmt: skip
    return path


def register(home: Home, pgp: PartnerPgp, key: Path, partner_id: str) -> None:
    """`gateway partner add ID --pull`: the partner logs in with `key`."""
    result = cli(home, "partner", "add", partner_id, "--openpgp-key", str(pgp.public_key),
                 "--fingerprint", pgp.fingerprint, "--pull", "--ssh-key", f"{key}.pub",
                 *TEST_REGIMES, "--reason", "test")  # fmt: skip
    assert result.exit_code == 0, result.stderr


def child_env() -> dict[str, str]:
    """The environment for ssh clients, with no agent to fall back on."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SSH_AUTH", "SSH_AGENT"))}


def run_group(argv: list[str], stdin: str = "", cwd: Path | None = None,
              timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run an ssh client in its own process group; kill the whole group on timeout."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=child_env(), cwd=cwd,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n[test] {argv[0]} timed out; killed\n"
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@dataclasses.dataclass
class Drop:
    """A gateway with its drop server running, and the pull partner's side of things."""

    home: Home
    gw: Gateway
    server: DropServer
    pgp: PartnerPgp
    key: Path
    known_hosts: Path
    local: Path  # the partner's working folder for `get` and `put`

    @property
    def download(self) -> Path:
        return self.home.mailbox / PULL_ID / "download"

    @property
    def upload(self) -> Path:
        return self.home.mailbox / PULL_ID / "upload"

    def ssh_options(self, key: Path | None = None) -> list[str]:
        options = ["-F", "/dev/null", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                   "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                   "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
                   "-o", "ConnectTimeout=10"]  # fmt: skip
        if key is not None:
            options += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        return options

    def sftp(
        self, batch: str, *keys: Path, user: str = PULL_ID
    ) -> subprocess.CompletedProcess[str]:
        """Run `batch` through OpenSSH sftp as `user` (default key: the partner's)."""
        argv = ["sftp", "-b", "-", "-P", str(self.server.port), *self.ssh_options()]
        for key in keys or (self.key,):
            argv += ["-i", str(key)]
        argv += ["-o", "IdentitiesOnly=yes", f"{user}@127.0.0.1"]
        return run_group(argv, batch.strip() + "\n", cwd=self.local)

    @contextlib.contextmanager
    def client(
        self, user: str = PULL_ID
    ) -> Iterator[tuple[paramiko.Transport, paramiko.SFTPClient]]:
        """A paramiko SFTP client logged in as the partner, with the host key pinned."""
        kind, blob = self.home.host_key_pub.read_text().split()[:2]
        pinned = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        transport = paramiko.Transport(("127.0.0.1", self.server.port))
        try:
            transport.connect(hostkey=pinned, username=user,
                              pkey=paramiko.Ed25519Key.from_private_key_file(str(self.key)))  # fmt: skip
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            try:
                yield transport, sftp
            finally:
                sftp.close()
        finally:
            transport.close()

    def exchange(self) -> None:
        """One round of the daemon's work with the pull partner."""
        partner = self.gw.ledger.partner(PULL_ID)
        due = self.gw.ledger.due(frozenset({State.SEALED}), time.time(), PULL_ID)
        self.gw.steps.turn(partner, due, poll=True)

    def publish(self, payload: bytes = b"<notice/>" * 100) -> str:
        """Send a file to the partner, seal it, and publish it; return the package id."""
        source = self.local / "notice.xml"
        source.write_bytes(payload)
        result = cli(self.home, "send", str(source), "--to", PULL_ID, "--kind", "conviction")
        assert result.exit_code == 0, result.stderr
        source.unlink()
        pid = result.stdout.strip()
        seal_due(self.gw)
        self.exchange()
        assert self.state(pid) is State.PUBLISHED
        return pid

    def state(self, pid: str) -> State:
        return self.gw.ledger.package(pid).state

    def actions(self, pid: str) -> list[str]:
        return [event.action for event in self.gw.ledger.events(pid)]


@pytest.fixture
def pull_partner(
    home: Home, short_tmp: Path, templates: Templates
) -> Iterator[tuple[PartnerPgp, Path]]:
    """AU-AFP registered as a pull partner: its gpg keyring and its SSH key."""
    pgp = templates.partner(short_tmp / "au", PULL_ID)
    try:
        key = keygen(short_tmp / "au_key")
        register(home, pgp, key, PULL_ID)
        pgp.trust_gateway(cli(home, "keys", "export", "--openpgp").stdout)
        yield pgp, key
    finally:
        pgp.close()


@contextlib.contextmanager
def serving(
    home: Home, short_tmp: Path, pgp: PartnerPgp, key: Path, clock: Clock | None = None
) -> Iterator[Drop]:
    """Open the gateway (on `clock` if given), start its drop server on a free loopback
    port; stop it after."""
    with gateway(home, "daemon", clock) as gw:
        server = gw.drop_server("127.0.0.1:0")
        server.start()
        try:
            known_hosts = short_tmp / f"known_hosts.{server.port}"
            kind, blob = home.host_key_pub.read_text().split()[:2]
            known_hosts.write_text(f"[127.0.0.1]:{server.port} {kind} {blob}\n")
            local = short_tmp / "local"
            local.mkdir(exist_ok=True)
            yield Drop(home, gw, server, pgp, key, known_hosts, local)
        finally:
            server.stop()


@pytest.fixture
def drop(home: Home, short_tmp: Path, pull_partner: tuple[PartnerPgp, Path]) -> Iterator[Drop]:
    """The gateway's drop server with AU-AFP registered, default limits."""
    with serving(home, short_tmp, *pull_partner) as drop:
        yield drop


def signed_receipt(pgp: PartnerPgp, pid: str, ciphertext: bytes) -> bytes:
    """A receipt as docs/partners.md section 3 has a partner write it."""
    body = {"schema": "gateway-receipt/1", "package_id": pid, "from": PULL_ID, "to": GATEWAY_ID,
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ciphertext_sha256": hashlib.sha256(ciphertext).hexdigest(),
            "disposition": "accepted"}  # fmt: skip
    return pgp.gpg("--local-user", pgp.fingerprint, "--sign", "--armor",
                   input=json.dumps(body).encode()).stdout  # fmt: skip


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path below `root` with its size, mode and mtime (links not followed)."""
    found = {}
    for path in root.rglob("*"):
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_size, st.st_mode, st.st_mtime_ns)
    return found


# -- publishing and downloading -----------------------------------------------------------


def test_published_package_is_listed_downloaded_and_delivered(drop: Drop) -> None:
    """A package in /download decrypts for the partner; reading it whole makes it delivered."""
    payload = os.urandom(200_000)
    pid = drop.publish(payload)
    assert sorted(os.listdir(drop.download)) == [f"{pid}.pgp"]

    listing = drop.sftp("ls /download")
    assert listing.returncode == 0, listing.stderr
    assert f"/download/{pid}.pgp" in listing.stdout

    got = drop.sftp(f"get /download/{pid}.pgp")
    assert got.returncode == 0, got.stderr
    drop.exchange()
    assert drop.state(pid) is State.DELIVERED
    assert drop.gw.ledger.package(pid).delivered_at
    assert "deliver" in drop.actions(pid)

    fetched = drop.local / f"{pid}.pgp"
    assert fetched.read_bytes() == (drop.download / f"{pid}.pgp").read_bytes()
    plaintext, status = drop.pgp.decrypt(fetched)
    assert any(line.startswith(f"VALIDSIG {drop.gw.own_key} ") for line in status)
    assert payload in plaintext


def test_partial_read_is_not_delivered(drop: Drop) -> None:
    """Reading part of a package and closing it leaves it published."""
    pid = drop.publish(os.urandom(100_000))
    with drop.client() as (_, sftp), sftp.open(f"/download/{pid}.pgp", "rb") as f:
        assert len(f.read(1000)) == 1000
    drop.exchange()
    assert drop.state(pid) is State.PUBLISHED

    with drop.client() as (_, sftp), sftp.open(f"/download/{pid}.pgp", "rb") as f:
        f.read()
    drop.exchange()
    assert drop.state(pid) is State.DELIVERED


def test_read_whole_out_of_order_is_delivered(drop: Drop) -> None:
    """Every byte read, in whatever order, then closed: delivered."""
    pid = drop.publish(os.urandom(100_000))
    with drop.client() as (_, sftp), sftp.open(f"/download/{pid}.pgp", "rb") as f:
        size = f.stat().st_size
        chunk = 16_384
        for offset in reversed(range(0, size, chunk)):
            f.seek(offset)
            assert f.read(chunk)
    drop.exchange()
    assert drop.state(pid) is State.DELIVERED


def test_download_cut_before_close_is_not_delivered(drop: Drop) -> None:
    """A whole read whose session ends before the file is closed is not a delivery."""
    pid = drop.publish(os.urandom(50_000))
    with drop.client() as (transport, sftp):
        f = sftp.open(f"/download/{pid}.pgp", "rb")
        f.read()
        transport.close()  # no CLOSE sent for the handle
    drop.exchange()
    assert drop.state(pid) is State.PUBLISHED


def test_remove_is_refused_before_reading_and_allowed_after(drop: Drop) -> None:
    """A partner may remove a package from /download only once it has read it whole."""
    pid = drop.publish()
    name = f"/download/{pid}.pgp"
    refused = drop.sftp(f"rm {name}")
    assert refused.returncode != 0
    assert (drop.download / f"{pid}.pgp").exists()

    done = drop.sftp(f"get {name}\nrm {name}")
    assert done.returncode == 0, done.stderr
    assert not (drop.download / f"{pid}.pgp").exists()
    drop.exchange()
    assert drop.state(pid) is State.DELIVERED

    assert drop.sftp(f"rm {name}").returncode != 0, "nothing left to remove"


def test_removal_needs_a_read_in_the_same_session(drop: Drop) -> None:
    """Having read a file in an earlier session does not allow removing it in a new one."""
    pid = drop.publish()
    name = f"/download/{pid}.pgp"
    assert drop.sftp(f"get {name}").returncode == 0
    assert drop.sftp(f"rm {name}").returncode != 0
    assert (drop.download / f"{pid}.pgp").exists()


# -- uploads ------------------------------------------------------------------------------


def test_uploaded_receipt_acknowledges_the_package(drop: Drop) -> None:
    """A signed receipt put as /upload/<pid>.receipt closes the package."""
    pid = drop.publish()
    assert drop.sftp(f"get /download/{pid}.pgp").returncode == 0
    drop.exchange()
    receipt = drop.local / f"{pid}.receipt"
    receipt.write_bytes(signed_receipt(drop.pgp, pid, (drop.local / f"{pid}.pgp").read_bytes()))

    put = drop.sftp(f"put {receipt.name} /upload/{pid}.receipt")
    assert put.returncode == 0, put.stderr
    assert os.listdir(drop.upload) == [f"{pid}.receipt"]
    drop.exchange()
    assert drop.state(pid) is State.ACKNOWLEDGED
    assert "receipt" in drop.actions(pid)
    assert os.listdir(drop.upload) == [], "the receipt was taken in"


def test_an_upload_named_outside_the_contract_is_quarantined_and_the_receipt_beside_it_applied(
    drop: Drop, tally: Tally
) -> None:
    """Nothing is left in a pull partner's upload folder for ever: a finished file of any
    other name goes to quarantine with its reason; parts being written wait."""
    tally.hostile_input("pull partner upload named outside the contract")
    pid = drop.publish()
    assert drop.sftp(f"get /download/{pid}.pgp").returncode == 0
    drop.exchange()
    receipt = drop.local / f"{pid}.receipt"
    receipt.write_bytes(signed_receipt(drop.pgp, pid, (drop.local / f"{pid}.pgp").read_bytes()))
    (drop.local / "notes.txt").write_bytes(b"a note for the office")
    (drop.local / "part").write_bytes(b"half")
    put = drop.sftp(f"put notes.txt /upload/notes.txt\nput part /upload/{pid}.pgp.partial\n"
                    f"put {receipt.name} /upload/{pid}.receipt")  # fmt: skip
    assert put.returncode == 0, put.stderr

    drop.exchange()

    assert drop.state(pid) is State.ACKNOWLEDGED
    assert os.listdir(drop.upload) == [f"{pid}.pgp.partial"], "a temporary name waits"
    [reason] = [json.loads(p.read_text()) for p in drop.home.quarantine.glob("*.reason.json")]
    assert reason["original_name"] == "notes.txt" and reason["partner"] == PULL_ID
    assert reason["reason"].startswith("not a name of the contract")
    assert (drop.home.quarantine / reason["id"]).read_bytes() == b"a note for the office"
    [event] = [e for e in drop.gw.ledger.events() if e.action == "upload.quarantined"]
    assert json.loads(str(event.detail))["quarantine"] == reason["id"]
    assert event.partner == PULL_ID
    assert list((drop.home.incoming / PULL_ID).iterdir()) == []


def test_upload_under_a_temporary_name_then_rename(drop: Drop) -> None:
    """A `.part` upload is not taken in; renamed to its final name, it is."""
    pid = drop.publish()
    assert drop.sftp(f"get /download/{pid}.pgp").returncode == 0
    drop.exchange()
    receipt = drop.local / "r"
    receipt.write_bytes(signed_receipt(drop.pgp, pid, (drop.local / f"{pid}.pgp").read_bytes()))
    part = f"/upload/.{pid}.receipt.part"

    assert drop.sftp(f"put r {part}").returncode == 0
    drop.exchange()
    assert os.listdir(drop.upload) == [f".{pid}.receipt.part"], "a temporary name waits"
    assert drop.state(pid) is State.DELIVERED

    renamed = drop.sftp(f"rename {part} /upload/{pid}.receipt")
    assert renamed.returncode == 0, renamed.stderr
    assert os.listdir(drop.upload) == [f"{pid}.receipt"]
    drop.exchange()
    assert drop.state(pid) is State.ACKNOWLEDGED


def test_rename_onto_an_existing_file_fails_and_changes_nothing(drop: Drop) -> None:
    """Rename never replaces a file in /upload, and a put never overwrites one."""
    (drop.local / "a").write_bytes(b"first")
    (drop.local / "b").write_bytes(b"second")
    assert drop.sftp("put a /upload/a.part\nput b /upload/b.part").returncode == 0

    clash = drop.sftp("rename /upload/a.part /upload/b.part")
    assert clash.returncode != 0
    assert (drop.upload / "a.part").read_bytes() == b"first"
    assert (drop.upload / "b.part").read_bytes() == b"second"

    again = drop.sftp("put a /upload/b.part")
    assert again.returncode != 0, "new files only"
    assert (drop.upload / "b.part").read_bytes() == b"second"
    assert sorted(os.listdir(drop.upload)) == ["a.part", "b.part"]


def test_paramiko_client_upload_and_rename(drop: Drop) -> None:
    """What a paramiko client (another gateway) does: put a dot-name, rename it into place."""
    with drop.client() as (_, sftp):
        with sftp.open("/upload/.x.part", "wb") as f:
            f.write(b"data")
        sftp.rename("/upload/.x.part", "/upload/x")
        with pytest.raises(OSError):
            sftp.posix_rename("/upload/x", "/upload/y")  # would replace a file: never offered
        names = sftp.listdir("/upload")
    assert names == ["x"]
    assert os.listdir(drop.upload) == ["x"]


def test_two_uploads_under_one_name_keep_the_first(drop: Drop) -> None:
    """Two handles writing the same new name: the first close wins, the second changes nothing."""
    with drop.client() as (_, sftp):
        first, second = sftp.open("/upload/same", "wb"), sftp.open("/upload/same", "wb")
        second.write(b"second")
        first.write(b"first")
        first.close()
        second.close()  # paramiko's client ignores errors on close: judge by what is left
    assert os.listdir(drop.upload) == ["same"]
    assert (drop.upload / "same").read_bytes() == b"first"


def test_upload_cut_by_a_killed_client_leaves_nothing(drop: Drop) -> None:
    """Killing sftp mid-upload leaves no file under the name, no hidden leftover."""
    (drop.local / "big").write_bytes(os.urandom(5 * 1024**2))
    argv = ["sftp", "-b", "-", "-l", "8192", "-P", str(drop.server.port),  # about 1 MB/s
            *drop.ssh_options(drop.key), f"{PULL_ID}@127.0.0.1"]  # fmt: skip
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, text=True, env=child_env(), cwd=drop.local,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            assert proc.stdin is not None
            proc.stdin.write("put big /upload/big\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 10
            while not (inflight := inflight_size(drop)):
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.01)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert 0 < inflight < 5 * 1024**2, "cut mid-way"
    assert_nothing_uploaded(drop, "big")


def inflight_size(drop: Drop) -> int:
    """Bytes so far of the upload in flight (0 if none, or still under 100 kB)."""
    sizes = [e.stat().st_size for e in os.scandir(drop.upload) if e.name.startswith(INFLIGHT)]
    return sizes[0] if sizes and sizes[0] >= 100_000 else 0


def test_upload_cut_before_close_leaves_nothing(drop: Drop) -> None:
    """A paramiko client that writes and drops the connection without CLOSE leaves nothing."""
    with drop.client() as (transport, sftp):
        f = sftp.open("/upload/cut.receipt", "wb")
        f.write(b"x" * 100_000)
        f.flush()
        assert sftp.listdir("/upload") == [], "an upload in flight is never listed"
        assert any(n.startswith(INFLIGHT) for n in os.listdir(drop.upload))
        with pytest.raises(OSError):
            sftp.stat(f"/upload/{next(iter(os.listdir(drop.upload)))}")
        transport.close()
    assert_nothing_uploaded(drop, "cut.receipt")


def assert_nothing_uploaded(drop: Drop, name: str) -> None:
    """Once the server has noticed the cut, `upload/` is empty and nothing was recorded."""
    before = [e.id for e in drop.gw.ledger.events()]
    deadline = time.monotonic() + 5
    while os.listdir(drop.upload) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(drop.upload) == [], f"left behind: {os.listdir(drop.upload)} (not {name})"
    drop.exchange()
    assert [e.id for e in drop.gw.ledger.events()] == before
    assert not (drop.home.incoming / PULL_ID / name).exists()
    assert not any(drop.home.quarantine.iterdir())


# -- escapes ------------------------------------------------------------------------------

ESCAPES = [
    "get ../../keys/ssh/id_ed25519",
    "get /etc/passwd",
    "get /download/../../../ledger.db",
    "get ../../../gateway.toml",
    "ls /..",
    "ls /download/..",
    "ls ../../keys",
    "put local.txt /download/local.txt",
    "put local.txt /local.txt",
    "put local.txt /upload/../local.txt",
    "put local.txt ../keys/x",
    "mkdir /upload/x",
    "mkdir /x",
    "rmdir /upload",
    "chmod 777 /upload/mine",
    "chown 0 /upload/mine",
    "ln -s /etc/passwd /upload/link",
    "symlink /etc/passwd /upload/link",
    "ln /upload/mine /upload/hard",
    "rename /download/{pid}.pgp /upload/{pid}.pgp",
    "rename /upload/mine /download/mine",
    "rename /upload/mine /mine",
    "rename /upload/mine ../mine",
    "rm /upload/mine",
    "rm /download/../ledger.db",
    "put local.txt /upload/a\\\\b",
]


def test_escapes_are_refused_and_touch_nothing(drop: Drop, short_tmp: Path) -> None:
    """Each path or request reaching outside the partner's view fails, reading and writing nothing."""
    pid = drop.publish()
    (drop.upload / "mine").write_bytes(b"mine")
    os.chmod(drop.upload / "mine", 0o600)
    (drop.local / "local.txt").write_bytes(b"local")
    outside = {p: tree(p) for p in (drop.home.root, short_tmp / "au")}
    local_before = sorted(os.listdir(drop.local))

    for command in ESCAPES:
        done = drop.sftp(command.format(pid=pid))
        assert done.returncode != 0, f"{command!r} was allowed: {done.stdout}"
        assert "root:" not in done.stdout and "PRIVATE KEY" not in done.stdout
        assert sorted(os.listdir(drop.local)) == local_before, f"{command!r} fetched something"

    assert {p: tree(p) for p in outside} == outside, "nothing changed on the host"
    assert oct(os.stat(drop.upload / "mine").st_mode & 0o777) == oct(0o600)


def test_cd_up_stays_in_the_mailbox(drop: Drop) -> None:
    """`cd ..` from `/` or `/download` lands on `/`, which shows only the two folders."""
    for batch in ("cd ..\nls -1", "cd /download\ncd ../..\nls -1", "cd /..\nls -1"):
        done = drop.sftp(batch)
        assert done.returncode == 0, done.stderr
        shown = [line for line in done.stdout.splitlines() if not line.startswith("sftp>")]
        assert sorted(n.strip("/").split("/")[-1] for n in shown) == ["download", "upload"]
    top = drop.sftp("pwd")
    assert "Remote working directory: /" in top.stdout


def test_odd_names_are_refused(drop: Drop) -> None:
    """Names with control characters, NUL, backslashes or over 200 bytes cannot be created."""
    with drop.client() as (_, sftp):
        for name in ["a\nb", "a\rb", "a\x00b", "a\x1bb", "a\\b", "a\u202eb", "x" * 201, "..", "."]:
            with pytest.raises(OSError):
                sftp.open(f"/upload/{name}", "wb").close()
        with pytest.raises(OSError):
            sftp.open("/upload/sub/x", "wb").close()
        with pytest.raises(OSError):
            sftp.open("/upload/", "wb").close()
        assert sftp.listdir("/upload") == []
    assert os.listdir(drop.upload) == []


def test_paramiko_requests_outside_the_jail_are_refused(drop: Drop) -> None:
    """Raw SFTP requests (stat, open, setstat, symlink, readlink) on escaping paths fail."""
    pid = drop.publish()
    (drop.upload / "mine").write_bytes(b"mine")
    before = tree(drop.home.root)
    with drop.client() as (_, sftp):
        for path in ["/etc/passwd", "/../ledger.db", "//etc/passwd", "/download/../../ledger.db",
                     "download/../../gateway.toml", "/keys/ssh/id_ed25519"]:  # fmt: skip
            with pytest.raises(OSError):
                sftp.open(path, "rb")
            with pytest.raises(OSError):
                sftp.stat(path)
        with pytest.raises(OSError):
            sftp.open(f"/download/{pid}.pgp", "r+b")
        with pytest.raises(OSError):
            sftp.open(f"/download/{pid}.pgp", "ab")
        with pytest.raises(OSError):
            sftp.open("/upload/mine", "ab")
        with pytest.raises(OSError):
            sftp.chmod("/upload/mine", 0o777)
        mtime = (drop.upload / "mine").stat().st_mtime
        sftp.utime("/upload/mine", (0, 0))  # accepted (rclone sets times), and ignored
        assert (drop.upload / "mine").stat().st_mtime == mtime
        with pytest.raises(OSError):
            sftp.utime("/../ledger.db", (0, 0))
        with pytest.raises(OSError):
            sftp.truncate("/upload/mine", 0)
        with pytest.raises(OSError):
            sftp.symlink("/etc/passwd", "/upload/link")
        with pytest.raises(OSError):
            sftp.readlink("/upload/mine")
        assert sftp.normalize("../../..") == "/"
        assert sftp.listdir("/") == ["download", "upload"]
    assert tree(drop.home.root) == before


def test_link_planted_in_the_mailbox_is_neither_listed_nor_read(
    drop: Drop, short_tmp: Path
) -> None:
    """A symlink (or a folder) in the download folder, even planted by the host, stays hidden."""
    secret = short_tmp / "secret.txt"
    secret.write_text("secret contents")
    os.symlink(secret, drop.download / "evil.pgp")
    os.symlink(drop.home.root / "ledger.db", drop.download / "ledger.pgp")
    (drop.download / "folder.pgp").mkdir()

    listing = drop.sftp("ls -la /download")
    assert listing.returncode == 0, listing.stderr
    assert "evil" not in listing.stdout and "ledger" not in listing.stdout
    assert "folder" not in listing.stdout
    for name in ("evil.pgp", "ledger.pgp", "folder.pgp"):
        got = drop.sftp(f"get /download/{name}")
        assert got.returncode != 0, name
        assert not (drop.local / name).exists()
    with drop.client() as (_, sftp):
        with pytest.raises(OSError):
            sftp.open("/download/evil.pgp", "rb")
        with pytest.raises(OSError):
            sftp.stat("/download/evil.pgp")
        with pytest.raises(OSError):
            sftp.lstat("/download/evil.pgp")
    assert secret.read_text() == "secret contents"


# -- logins -------------------------------------------------------------------------------


def test_partner_key_logs_in_only_as_that_partner(
    drop: Drop, short_tmp: Path, templates: Templates
) -> None:
    """AU-AFP's key is not FR-CJN's, and unknown user names are refused."""
    other = templates.partner(short_tmp / "fr", OTHER_ID)
    try:
        other_key = keygen(short_tmp / "fr_key")
        register(drop.home, other, other_key, OTHER_ID)
    finally:
        other.close()

    assert drop.sftp("ls /").returncode == 0
    assert drop.sftp("ls /", other_key, user=OTHER_ID).returncode == 0
    for user, key in [(OTHER_ID, drop.key), (PULL_ID, other_key), ("XX-NOPE", drop.key),
                      ("root", drop.key), (GATEWAY_ID, drop.key)]:  # fmt: skip
        refused = drop.sftp("ls /", key, user=user)
        assert refused.returncode != 0, (user, key)
        assert "Permission denied (publickey)" in refused.stderr


def test_disabled_partner_cannot_log_in(drop: Drop) -> None:
    """A disabled pull partner's key is refused until it is enabled again."""

    def enable(value: int) -> None:  # no `partner disable` command yet: set the flag itself
        drop.gw.ledger.db.table("partners").update(PULL_ID, {"enabled": value})

    enable(0)
    refused = drop.sftp("ls /")
    assert refused.returncode != 0
    assert "Permission denied (publickey)" in refused.stderr
    enable(1)
    assert drop.sftp("ls /").returncode == 0


def test_key_offered_without_proof_is_no_login(drop: Drop, short_tmp: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """Offering the partner's public key without holding the private key logs nobody in.

    OpenSSH asks whether the key would do, then cannot sign; the log must not say
    "logged in" for that (the public key is no secret).
    """
    only_public = short_tmp / "only_public"
    only_public.write_text(Path(f"{drop.key}.pub").read_text())
    os.chmod(only_public, 0o600)
    with caplog.at_level("INFO", logger="gateway"):
        refused = drop.sftp("ls /", only_public)
    assert refused.returncode != 0
    assert "Permission denied (publickey)" in refused.stderr
    assert not [r.getMessage() for r in caplog.records if "logged in" in r.getMessage()]


def test_only_publickey_is_offered(drop: Drop) -> None:
    """The server offers publickey authentication and nothing else; a password never works."""
    argv = ["ssh", "-v", "-p", str(drop.server.port), *drop.ssh_options(),
            "-o", "PreferredAuthentications=password,keyboard-interactive",
            "-o", "PubkeyAuthentication=no", f"{PULL_ID}@127.0.0.1", "true"]  # fmt: skip
    done = run_group(argv)
    assert done.returncode != 0
    assert "Authentications that can continue: publickey\n" in done.stderr
    assert "Permission denied (publickey)" in done.stderr

    with paramiko.Transport(("127.0.0.1", drop.server.port)) as transport:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password(PULL_ID, "password")
        assert refused.value.allowed_types == ["publickey"]
        with pytest.raises(paramiko.BadAuthenticationType):
            transport.auth_none(PULL_ID)


def test_exec_shell_and_forwarding_are_refused(drop: Drop) -> None:
    """Only the sftp subsystem: no command, no shell, no port forwarding."""
    ran = run_group(["ssh", "-p", str(drop.server.port), *drop.ssh_options(drop.key),
                     f"{PULL_ID}@127.0.0.1", "id"])  # fmt: skip
    assert ran.returncode != 0
    assert "uid=" not in ran.stdout and ran.stdout == ""

    shell = run_group(["ssh", "-tt", "-p", str(drop.server.port), *drop.ssh_options(drop.key),
                       f"{PULL_ID}@127.0.0.1"], stdin="id\nexit\n")  # fmt: skip
    assert shell.returncode != 0
    assert "uid=" not in shell.stdout

    forward = run_group(["ssh", "-N", "-p", str(drop.server.port), *drop.ssh_options(drop.key),
                         "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:0:127.0.0.1:22",
                         f"{PULL_ID}@127.0.0.1"], timeout=15)  # fmt: skip
    assert forward.returncode != 0
    assert "timed out" not in forward.stderr

    with drop.client() as (transport, _):
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 1))
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
        channel = transport.open_session()
        try:
            with pytest.raises(paramiko.SSHException):
                channel.exec_command("id")
        finally:
            channel.close()
        channel = transport.open_session()
        try:
            with pytest.raises(paramiko.SSHException):
                channel.invoke_subsystem("shell")
        finally:
            channel.close()


# -- limits -------------------------------------------------------------------------------


@pytest.fixture
def limited(home: Home, short_tmp: Path, pull_partner: tuple[PartnerPgp, Path],
            request: pytest.FixtureRequest) -> Iterator[Drop]:  # fmt: skip
    """A drop server started with the settings given as the fixture's parameter."""
    for name, value in request.param.items():
        set_setting(home, name, value)
    with serving(home, short_tmp, *pull_partner) as drop:
        yield drop


@pytest.mark.parametrize("limited", [{"serve.max_auth_attempts": 1}], indirect=True)
def test_one_auth_attempt_refuses_a_second_key(limited: Drop, short_tmp: Path) -> None:
    """With one attempt, a client whose first key is wrong is refused, even with the right one next."""
    wrong = keygen(short_tmp / "wrong_key")
    refused = limited.sftp("ls /", wrong, limited.key)
    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr


@pytest.mark.parametrize("limited", [{"serve.max_auth_attempts": 1}], indirect=True)
def test_one_auth_attempt_is_enough_for_the_right_key(limited: Drop) -> None:
    """With one attempt allowed, OpenSSH offering the right key alone logs in.

    OpenSSH first asks whether a key would do (no signature), then signs: one key tried.
    """
    done = limited.sftp("ls /")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("limited", [{"serve.ban_after_failures": 2, "serve.ban_seconds": 60}],
                         indirect=True)  # fmt: skip
def test_repeated_failures_ban_the_address(limited: Drop, short_tmp: Path) -> None:
    """After two failed logins from 127.0.0.1 even the right key is refused."""
    wrong = keygen(short_tmp / "wrong_key")
    assert limited.sftp("ls /").returncode == 0, "one success first: it does not count"
    for _ in range(2):
        assert limited.sftp("ls /", wrong).returncode != 0
    banned = limited.sftp("ls /")
    assert banned.returncode != 0
    assert "Permission denied" not in banned.stderr, "cut before authentication"


@pytest.fixture
def on_clock(
    home: Home, short_tmp: Path, pull_partner: tuple[PartnerPgp, Path], clock: ManualClock
) -> Iterator[Drop]:
    """A drop server whose clock the test moves, idle after 60 s."""
    set_setting(home, "serve.idle_timeout_seconds", 60)
    with serving(home, short_tmp, *pull_partner, clock=clock) as drop:
        yield drop


#: Real time for the server's idle watch, which looks twice a second, to have looked.
WATCHED = 1.5


def test_idle_session_is_closed(on_clock: Drop, clock: ManualClock) -> None:
    """An SFTP session that does nothing past the idle limit is closed by the server."""
    with on_clock.client() as (transport, sftp):
        assert sftp.listdir("/") == ["download", "upload"]
        clock.advance(61)
        deadline = time.monotonic() + WATCHED
        while transport.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not transport.is_active()


def test_busy_session_is_not_idle(on_clock: Drop, clock: ManualClock) -> None:
    """A session that keeps making requests stays open well past the idle limit."""
    with on_clock.client() as (transport, sftp):
        for _ in range(8):
            sftp.listdir("/upload")
            clock.advance(30)
        time.sleep(WATCHED)
        assert transport.is_active()


LIMIT = {"serve.max_upload_bytes": 100_000}


@pytest.mark.parametrize("limited", [LIMIT], indirect=True)
def test_upload_over_the_limit_fails_and_leaves_nothing(limited: Drop) -> None:
    """OpenSSH putting a file larger than serve.max_upload_bytes fails; nothing of it stays."""
    (limited.local / "big").write_bytes(os.urandom(300_000))
    refused = limited.sftp("put big /upload/big.receipt")
    assert refused.returncode != 0
    time.sleep(0.5)
    left = {n: (limited.upload / n).stat().st_size for n in os.listdir(limited.upload)}
    assert left == {}, "a refused upload is not published, truncated or whole"


@pytest.mark.parametrize("limited", [LIMIT], indirect=True)
def test_upload_over_the_limit_by_paramiko_leaves_nothing(limited: Drop) -> None:
    """A paramiko client writing past the limit gets an error and leaves nothing."""
    with limited.client() as (_, sftp):
        with pytest.raises(OSError), sftp.open("/upload/big.receipt", "wb") as f:
            f.write(os.urandom(300_000))
        left = sftp.listdir("/upload")
    assert left == []
    assert os.listdir(limited.upload) == []


@pytest.mark.parametrize("limited", [LIMIT], indirect=True)
def test_upload_within_the_limit_is_kept(limited: Drop) -> None:
    """A file up to serve.max_upload_bytes is taken."""
    (limited.local / "small").write_bytes(os.urandom(100_000))
    fits = limited.sftp("put small /upload/small.part")
    assert fits.returncode == 0, fits.stderr
    assert os.listdir(limited.upload) == ["small.part"]


def test_a_crash_before_the_receipt_is_applied_keeps_it_for_the_next_turn(
    drop: Drop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receipt stays in the gateway's spool until the package's new state is committed."""
    pid = drop.publish()
    assert drop.sftp(f"get /download/{pid}.pgp").returncode == 0
    drop.exchange()
    receipt = drop.local / f"{pid}.receipt"
    receipt.write_bytes(signed_receipt(drop.pgp, pid, (drop.local / f"{pid}.pgp").read_bytes()))
    assert drop.sftp(f"put {receipt.name} /upload/{pid}.receipt").returncode == 0
    transition = Ledger.transition

    def dies_at_the_receipt(ledger: Ledger, package_id: str, new: State, action: str, *a: Any, **k: Any) -> Any:  # fmt: skip
        if action == "receipt":
            raise SystemExit("the gateway died")
        return transition(ledger, package_id, new, action, *a, **k)

    with monkeypatch.context() as patched:
        patched.setattr(Ledger, "transition", dies_at_the_receipt)
        drop.exchange()  # the handling thread dies; the turn goes on
    assert drop.state(pid) is State.DELIVERED
    with gateway(drop.home, "daemon") as restarted:  # the next start
        restarted.steps.turn(restarted.ledger.partner(PULL_ID), [], poll=True)
    assert drop.state(pid) is State.ACKNOWLEDGED
    assert drop.actions(pid).count("receipt") == 1
    assert (drop.home.receipts_in / f"{pid}.receipt").read_bytes() == receipt.read_bytes()
    assert list((drop.home.incoming / PULL_ID).iterdir()) == []


def test_a_hidden_upload_may_be_written_again_or_removed_but_a_finished_file_not(
    drop: Drop,
) -> None:
    """A client that retries after a cut upload can redo its own `.part`; nothing else."""
    with drop.client() as (_, sftp):
        with sftp.open("/upload/.x.part", "wb") as f:
            f.write(b"cut short")
        with sftp.open("/upload/.x.part", "wb") as f:
            f.write(b"whole")
        sftp.rename("/upload/.x.part", "/upload/x")
        with pytest.raises(PermissionError):
            sftp.open("/upload/x", "wb")
        with pytest.raises(PermissionError):
            sftp.remove("/upload/x")
        with sftp.open("/upload/.y.part", "wb") as f:
            f.write(b"abandoned")
        sftp.remove("/upload/.y.part")
    assert os.listdir(drop.upload) == ["x"]
    assert (drop.upload / "x").read_bytes() == b"whole"


def test_hidden_upload_files_a_dead_server_left_are_removed_at_the_next_login(drop: Drop) -> None:
    stale = drop.upload / f"{INFLIGHT}0123456789abcdef"
    stale.write_bytes(b"half an upload of a server that was killed")
    with drop.client() as (_, sftp):
        assert sftp.listdir("/upload") == []
    assert not stale.exists()


# -- limits a hostile client reaches ------------------------------------------------------


def fds() -> int:
    """This process's open file descriptors (the drop server runs in it), but the ledger's.

    SQLite keeps a closed connection's descriptor while another connection of the process
    holds a lock on the file, for its next connection: how many it keeps depends on how
    many were open at once, not on a leak. Connections are counted by the ledger instead.
    """
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found += "ledger.db" not in os.readlink(f"/proc/self/fd/{fd}")
    return found


def still_serving(drop: Drop) -> None:
    """After a hostile client: a well-behaved one still logs in and lists (once the server
    has let the hostile sessions go, which serve.max_sessions_per_partner still counts
    for a moment after their clients close them)."""
    wait_for(lambda: not drop.server.sessions_of(PULL_ID), 10, "the closed sessions let go")
    with drop.client() as (_, sftp):
        assert sftp.listdir("/") == ["download", "upload"]


@pytest.mark.parametrize("limited", [{"serve.max_channels_per_connection": 3}], indirect=True)
def test_channels_one_connection_may_open_are_bounded(limited: Drop) -> None:
    with limited.client() as (transport, _):  # its SFTP session is the first channel
        extra = [transport.open_session() for _ in range(2)]
        with pytest.raises(paramiko.ChannelException, match="Resource shortage"):
            transport.open_session()
        for channel in extra:
            channel.close()
    still_serving(limited)


@pytest.mark.parametrize("limited", [{"serve.max_open_handles": 5}], indirect=True)
def test_open_handles_of_a_session_are_bounded(limited: Drop) -> None:
    pid = limited.publish()
    with limited.client() as (_, sftp):
        held = [sftp.open(f"/download/{pid}.pgp", "rb") for _ in range(5)]
        with pytest.raises(OSError, match="more than 5 open handles"):
            sftp.open(f"/download/{pid}.pgp", "rb")
        with pytest.raises(OSError, match="more than 5 open handles"):
            sftp.listdir("/download")
        held.pop().close()
        assert sftp.listdir("/download") == [f"{pid}.pgp"], "one handle free again"
        for f in held:
            f.close()
    still_serving(limited)


def test_a_read_request_is_answered_with_at_most_max_read_bytes(drop: Drop) -> None:
    """One 2 GiB READ is answered with a short read, never the whole file in one packet."""
    pid = drop.publish(os.urandom(1024 * 1024))
    with drop.client() as (_, sftp):
        handle = sftp.open(f"/download/{pid}.pgp", "rb")
        try:
            kind, msg = sftp._request(paramiko.sftp.CMD_READ, handle.handle, int64(0), 2**31 - 1)
            assert kind == paramiko.sftp.CMD_DATA
            assert len(msg.get_binary()) == 261120
        finally:
            handle.close()


@pytest.mark.parametrize("limited", [{"serve.max_sessions_per_partner": 2}], indirect=True)
def test_sessions_of_one_partner_are_bounded(limited: Drop) -> None:
    with (
        limited.client(),
        limited.client(),
        pytest.raises(paramiko.ChannelException, match="Resource shortage"),
        limited.client(),
    ):
        pass
    still_serving(limited)


@pytest.mark.parametrize("limited", [{"serve.auth_timeout_seconds": 1}], indirect=True)
def test_a_connection_that_never_logs_in_is_closed(limited: Drop) -> None:
    with socket.create_connection(("127.0.0.1", limited.server.port), timeout=10) as conn:
        conn.sendall(b"SSH-2.0-silent\r\n")
        conn.settimeout(10)
        received = b""
        while chunk := conn.recv(4096):  # ends when the server closes the connection
            received += chunk
    assert received.startswith(b"SSH-2.0-")
    still_serving(limited)


def test_disabling_a_partner_ends_its_open_session(drop: Drop) -> None:
    with drop.client() as (transport, sftp):
        assert sftp.listdir("/") == ["download", "upload"]
        done = cli(drop.home, "partner", "disable", PULL_ID, "--reason", "test: breach reported")
        assert done.exit_code == 0, done.stderr
        deadline = time.monotonic() + 10
        while transport.is_active():
            assert time.monotonic() < deadline, "the session outlived the partner's disabling"
            time.sleep(0.05)
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            sftp.listdir("/")


def test_only_modern_algorithms_and_no_extension_are_offered(drop: Drop) -> None:
    with drop.client() as (transport, _):
        assert transport.remote_cipher in CIPHERS and transport.remote_mac in MACS
    for cipher, mac in (("3des-cbc", "hmac-sha2-256"), ("aes128-ctr", "hmac-md5"),
                        ("aes256-cbc", "hmac-sha2-256"), ("aes128-ctr", "hmac-sha1")):  # fmt: skip
        old = paramiko.Transport(("127.0.0.1", drop.server.port))
        try:
            options = old.get_security_options()
            options.ciphers, options.digests = (cipher,), (mac,)
            with pytest.raises(paramiko.SSHException):
                old.start_client(timeout=10)
        finally:
            old.close()
            old.packetizer.complete_handshake()  # paramiko leaves its timer running
    with drop.client() as (_, sftp), pytest.raises(OSError):  # paramiko's check-file spun a CPU
        sftp._request(paramiko.sftp.CMD_EXTENDED, "check-file", "/upload/x", "md5", 0, 0, 0)
    still_serving(drop)


def test_the_descriptors_of_hostile_sessions_are_all_given_back(drop: Drop) -> None:
    """Sessions cut with handles still open give every descriptor and ledger connection back."""
    pid = drop.publish()

    def hostile_round() -> None:
        for _ in range(5):
            with drop.client() as (transport, sftp):
                for _ in range(10):
                    sftp.open(f"/download/{pid}.pgp", "rb")  # never closed by the client
                transport.close()
            # Each cut session is let go before the next: serve.max_sessions_per_partner
            # would otherwise refuse the fifth while the server still counts the others.
            deadline = time.monotonic() + 10
            while drop.server.sessions_of(PULL_ID) and time.monotonic() < deadline:
                time.sleep(0.05)

    hostile_round()
    before, connections = fds(), drop.gw.ledger.open_connections()
    hostile_round()
    deadline = time.monotonic() + 10
    while fds() > before or drop.gw.ledger.open_connections() > connections:
        assert time.monotonic() < deadline, (fds(), before, drop.gw.ledger.open_connections())
        time.sleep(0.05)
    still_serving(drop)


def test_out_of_descriptors_the_server_says_so_then_serves_again(
    home: Home, short_tmp: Path, pull_partner: tuple[PartnerPgp, Path]
) -> None:
    """`gateway serve` with its descriptors used up (RLIMIT_NOFILE 64, a hundred idle
    connections) logs that it cannot accept, and lets the partner in once they are freed."""
    set_setting(home, "serve.max_connections", 500)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = short_tmp / "serve.log"
    argv = ["prlimit", "--nofile=64", sys.executable, "-m", "gateway", "--home", str(home.root), "serve", "--listen",
            f"127.0.0.1:{port}"]  # fmt: skip
    with log.open("w") as err, subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
    ) as serve:  # fmt: skip
        try:
            wait_for(lambda: "listening" in log.read_text(), 30, "the drop server listening")
            hogs = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(100)]
            wait_for(lambda: "cannot accept a connection" in log.read_text(), 30, "EMFILE")
            for hog in hogs:
                hog.close()
            known_hosts = short_tmp / "known_hosts"
            kind, blob = home.host_key_pub.read_text().split()[:2]
            known_hosts.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
            listed = None

            def lets_in() -> bool:
                nonlocal listed
                listed = subprocess.run(
                    ["sftp", "-b", "-", "-P", str(port), "-F", "/dev/null",
                     "-o", "IdentityAgent=none", "-o", "BatchMode=yes", "-i", str(pull_partner[1]),
                     "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                     f"{PULL_ID}@127.0.0.1"],
                    input="ls /\n", capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                return listed.returncode == 0

            wait_for(lets_in, 30, "a login once descriptors are free")
            assert listed is not None and "download" in listed.stdout
            assert serve.poll() is None, "the drop server stopped"
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(15)
    assert serve.returncode == 0, log.read_text()


def test_a_pull_partners_visits_are_its_health_and_its_sessions_are_counted(drop: Drop) -> None:
    """Reading a package whole is a successful contact (the partner's health record); the
    metrics count its open session on the drop server."""

    def sessions() -> dict[str, float]:
        text = drop.gw.metrics(drop.server).text().decode()
        return {s.labels["partner"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "gateway_drop_sessions"}  # fmt: skip

    pid = drop.publish()
    assert PULL_ID not in drop.gw.ledger.contacts()
    assert sessions() == {PULL_ID: 0}
    with drop.client() as (_, sftp):
        deadline = time.monotonic() + TIMEOUT
        while sessions() != {PULL_ID: 1} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sessions() == {PULL_ID: 1}
        with sftp.open(f"download/{pid}.pgp", "rb") as f:
            f.read()
    record = drop.gw.ledger.contacts()[PULL_ID]
    assert (record.status, record.failures) == ("ok", 0)
    assert json.loads(cli(drop.home, "partner", "show", PULL_ID, "--json").stdout)["health"] == "ok"


def test_openssh_sftp_is_offered_aead_and_etm_first_and_gets_gcm_when_it_asks(drop: Drop) -> None:
    """What OpenSSH's own client sees of the drop server (`sftp -vv`): the server's
    proposal puts AES-GCM then the ETM MACs first; the client's own order picks (SSH lets
    the client choose), so a partner preferring AES-GCM gets it, and one with OpenSSH's
    defaults gets an ETM MAC."""

    def session(*options: str) -> str:
        argv = ["sftp", "-vv", "-b", "-", "-P", str(drop.server.port), *drop.ssh_options(drop.key),
                *options, f"{PULL_ID}@127.0.0.1"]  # fmt: skip
        done = run_group(argv, "ls\n", cwd=drop.local)
        assert done.returncode == 0, done.stderr
        return done.stderr

    def chosen(log: str) -> tuple[str, str]:
        [line] = [t for t in log.splitlines() if "kex: server->client cipher:" in t]
        words = line.split()
        return words[words.index("cipher:") + 1], words[words.index("MAC:") + 1]

    default = session()
    proposal = default.split("peer server KEXINIT proposal", 1)[1]
    ciphers = next(t for t in proposal.splitlines() if "ciphers stoc:" in t).split(": ")[-1]
    macs = next(t for t in proposal.splitlines() if "MACs stoc:" in t).split(": ")[-1]
    assert ciphers.split(",")[:2] == ["aes256-gcm@openssh.com", "aes128-gcm@openssh.com"]
    assert macs.split(",")[:2] == ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]
    assert chosen(default)[1].endswith("-etm@openssh.com")
    assert chosen(session("-o", "Ciphers=aes256-gcm@openssh.com,aes128-ctr"))[0] == (
        "aes256-gcm@openssh.com"
    )
