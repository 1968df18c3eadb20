"""Crash windows of the drop server: `gateway run` SIGKILLed while a pull partner uploads.

The real daemon serves the partner US-NCB (a paramiko client, which can stop at any
step, and plain gpg); the daemon is SIGKILLed with the partner's upload in a given state,
started again, and the partner does what a client does after a cut session: its whole
upload again (hidden part, then rename). The end state is checked with bytes: accepted
once, its receipt published once, nothing left in the upload folder or the spool.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from gateway.adapters.dropserver import INFLIGHT
from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    PAYLOAD,
    PAYLOAD_NAME,
    TEST_REGIMES,
    DaemonProcess,
    Desk,
    Tally,
    Templates,
    actions,
    cli,
    envelope,
    gateway,
    manifest,
    partner_pid,
    seal,
    set_setting,
    wait_for,
)
from tests.sshd import free_port


@pytest.fixture
def pulled(home: Home, short_tmp: Path, templates: Templates) -> Iterator[tuple[Desk, Path, int]]:
    """The gateway serving US-NCB as a pull partner on a loopback port: the partner's desk,
    its SSH key and the port."""
    pgp = templates.partner(short_tmp / "partner-gnupg")
    key = short_tmp / "partner_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    added = cli(home, "partner", "add", PARTNER_ID, "--openpgp-key", str(pgp.public_key),
                "--fingerprint", pgp.fingerprint, "--pull", "--ssh-key", f"{key}.pub",
                *TEST_REGIMES, "--reason", "test partner")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    port = free_port()
    for name, value in (("serve.listen", f"127.0.0.1:{port}"), ("daemon.settle_seconds", 1),
                        ("retry.first_delay_seconds", 1), ("retry.max_delay_seconds", 2)):  # fmt: skip
        set_setting(home, name, value)
    with gateway(home) as gw:
        fpr = gw.own_key
    pgp.trust_gateway(cli(home, "keys", "export", "--openpgp").stdout)
    pgp.gpg("--quick-lsign-key", fpr)
    try:
        yield Desk(home, pgp, pgp, None, fpr, short_tmp), key, port  # type: ignore[arg-type]
    finally:
        pgp.close()


@contextlib.contextmanager
def partner_session(home: Home, key: Path, port: int) -> Iterator[paramiko.SFTPClient]:
    """The partner logged in to the drop server, the gateway's host key pinned."""
    kind, blob = home.host_key_pub.read_text().split()[:2]
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.connect(hostkey=paramiko.PKey.from_type_string(kind, base64.b64decode(blob)),
                          username=PARTNER_ID, pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))  # fmt: skip
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        yield sftp
    finally:
        transport.close()


def upload_again(home: Home, key: Path, port: int, name: str, wire: bytes) -> None:
    """What a client does after a cut session: the whole upload again, part then rename."""
    with partner_session(home, key, port) as sftp:
        with sftp.open(f"/upload/.{name}.part", "wb") as f:
            f.write(wire)
        sftp.rename(f"/upload/.{name}.part", f"/upload/{name}")


def upload(home: Home) -> Path:
    return home.mailbox / PARTNER_ID / "upload"


def state(home: Home, pid: str) -> State | None:
    """The package's state, or None before it is in the ledger."""
    with gateway(home) as gw:
        found = gw.ledger.find(pid)
    return found.state if found else None


def accepted_once(desk: Desk, pid: str, daemon: DaemonProcess, tally: Tally) -> None:
    """The package accepted once, its receipt published, nothing left behind."""
    home = desk.home
    wait_for(lambda: state(home, pid) is State.ACCEPTED, 60, "the package accepted")
    wait_for(lambda: (home.mailbox / PARTNER_ID / "download" / f"{pid}.receipt").exists(), 30,
             "its receipt published")  # fmt: skip
    assert daemon.terminate() == 0
    accepts = actions(home, pid).count("accept")
    tally.packages_checked(1, lost=1 - min(1, accepts), duplicated=max(0, accepts - 1))
    with gateway(home) as gw:
        assert [p.package_id for p in gw.ledger.packages(direction="in")] == [pid]
    assert (home.inbound / PARTNER_ID / pid / PAYLOAD_NAME).read_bytes() == PAYLOAD
    assert os.listdir(upload(home)) == [], "no part, no in-flight file, nothing untaken"
    assert list(home.incoming.rglob("*.pgp")) == []
    assert list(home.work.iterdir()) == []


def test_the_daemon_says_it_has_started_only_once_its_drop_server_listens(
    pulled: tuple[Desk, Path, int],
) -> None:
    """A partner (or a test) that connects on `daemon started` finds the server up: the
    line once came before the recovery and the server's start, and a connection made on
    it could be refused."""
    desk, key, port = pulled
    daemon = DaemonProcess(desk.home).start()
    try:
        text = daemon.log.read_text()
        assert text.index("drop server listening") < text.index("daemon started")
        with partner_session(desk.home, key, port) as sftp:  # at once, no retry
            assert sorted(sftp.listdir("/")) == ["download", "upload"]
    finally:
        assert daemon.terminate() == 0


def test_killed_while_a_partner_uploads_takes_the_upload_done_again(
    pulled: tuple[Desk, Path, int], tally: Tally
) -> None:
    desk, key, port = pulled
    tally.fault("drop server SIGKILLed while a pull partner uploads")
    pid = partner_pid()
    wire = seal(desk, envelope(manifest(desk, pid)))
    daemon = DaemonProcess(desk.home).start()
    try:
        with partner_session(desk.home, key, port) as sftp:
            part = sftp.open(f"/upload/.{pid}.pgp.part", "wb")
            part.write(wire[: len(wire) // 2])
            part.flush()
            wait_for(lambda: any(p.name.startswith(INFLIGHT) for p in upload(desk.home).iterdir()),
                     10, "the upload in flight on the server")  # fmt: skip
            daemon.kill()
        names = os.listdir(upload(desk.home))
        assert len(names) == 1 and names[0].startswith(INFLIGHT), "killed mid-upload"

        daemon.start()
        upload_again(desk.home, key, port, f"{pid}.pgp", wire)

        accepted_once(desk, pid, daemon, tally)
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()


def test_killed_with_the_part_whole_before_the_rename_takes_it_once(
    pulled: tuple[Desk, Path, int], tally: Tally
) -> None:
    desk, key, port = pulled
    tally.fault("drop server SIGKILLed with a partner's part whole, before its rename")
    pid = partner_pid()
    wire = seal(desk, envelope(manifest(desk, pid)))
    daemon = DaemonProcess(desk.home).start()
    try:
        with partner_session(desk.home, key, port) as sftp:
            with sftp.open(f"/upload/.{pid}.pgp.part", "wb") as f:
                f.write(wire)
            daemon.kill()
        assert os.listdir(upload(desk.home)) == [f".{pid}.pgp.part"], "killed before the rename"
        assert (upload(desk.home) / f".{pid}.pgp.part").read_bytes() == wire

        daemon.start()
        upload_again(desk.home, key, port, f"{pid}.pgp", wire)

        accepted_once(desk, pid, daemon, tally)
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()


#: `gateway ARGV` that SIGKILLs itself when it removes a file whose path ends with SUFFIX:
#: the drop server's rename has linked the partner's part under its final name, and dies
#: before removing the part.
KILLED_IN_RENAME = """
import os, signal, sys
suffix, *argv = sys.argv[1:]
unlink = os.unlink
def dies(path, *args, **kwargs):
    if os.fspath(path).endswith(suffix):
        os.kill(os.getpid(), signal.SIGKILL)
    return unlink(path, *args, **kwargs)
os.unlink = dies
from gateway.cli import main
main(argv, prog_name="gateway")
"""


def test_killed_inside_the_rename_takes_the_file_once_and_a_second_upload_is_a_replay(
    pulled: tuple[Desk, Path, int], tally: Tally
) -> None:
    desk, key, port = pulled
    tally.fault("drop server SIGKILLed inside the rename of a partner's part")
    home = desk.home
    pid = partner_pid()
    wire = seal(desk, envelope(manifest(desk, pid)))
    log = home.root / "daemon.log"
    with log.open("ab") as out:
        doomed = subprocess.Popen([sys.executable, "-c", KILLED_IN_RENAME, f"/.{pid}.pgp.part",
                                   "--home", str(home.root), "run"],
                                  stdout=out, stderr=out, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: "daemon started" in log.read_text(), 30, "the daemon to start")
        with (
            contextlib.suppress(paramiko.SSHException, EOFError, OSError),
            partner_session(home, key, port) as sftp,
        ):
            with sftp.open(f"/upload/.{pid}.pgp.part", "wb") as f:
                f.write(wire)
            sftp.rename(f"/upload/.{pid}.pgp.part", f"/upload/{pid}.pgp")
        assert doomed.wait(10) == -signal.SIGKILL
    finally:
        if doomed.poll() is None:
            doomed.kill()
            doomed.wait()
    assert sorted(os.listdir(upload(home))) == [f".{pid}.pgp.part", f"{pid}.pgp"], "killed in it"

    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: state(home, pid) is State.ACCEPTED, 60, "the package accepted")
        # The client never heard back from its rename: it does its whole upload again.
        upload_again(home, key, port, f"{pid}.pgp", wire)
        wait_for(lambda: "replay" in actions(home, pid), 30, "the second upload seen as a replay")
        accepted_once(desk, pid, daemon, tally)
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()
