"""Faults and hostile peers: nothing accepted is lost, nothing is sent twice, nothing gets in.

Every test injects a fault or feeds a hostile input to the real gateway (real gpg, a real
OpenSSH sshd on loopback, a real SQLite ledger), then asserts the end state: the files
on the partner's server, the ledger's rows and events, the spool and the quarantine.
Network faults go through `tests.faultproxy.FaultProxy`, between the gateway and the
sshd; the partner is registered at the proxy's port (known_hosts pins host:port).

Each test records what it injected and what it checked with the `tally` fixture
(`tests.helpers.Tally`, recorded by the fixture in tests/conftest.py), which
`scripts/faults` sums into its report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import resource
import sqlite3
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from gateway.adapters.home import Home
from gateway.adapters.sftp import SftpPartner
from gateway.core.lifecycle import State
from gateway.core.model import Event, Package
from gateway.core.names import new_ulid
from gateway.pipeline import deliver as delivery
from gateway.transports.push import endpoint
from tests.faultproxy import DOWN, UP, Fault, FaultProxy
from tests.helpers import (
    PARTNER_ID,
    PAYLOAD,
    PAYLOAD_NAME,
    TEST_REGIMES,
    DaemonProcess,
    Desk,
    ManualClock,
    PartnerPgp,
    Tally,
    cli,
    delivered,
    gateway,
    leave,
    manifest,
    member,
    only_quarantined,
    partner_pid,
    processes_under,
    quarantined,
    receipt_json,
    remote_files,
    retry_due,
    run_once,
    seal,
    send,
    set_setting,
    sha256,
    sign,
    tar,
    wait_for,
)
from tests.sshd import SshServer

#: sftp.connect_timeout_seconds and sftp.io_timeout_seconds in these tests. A stall never
#: ends, so each one costs a pass this long (a stalled `run --once` meets it two to four
#: times); a clean login through the proxy takes 0.10-0.15 s here, so 2 s leaves room.
DEADLINE = 2
PASS_LIMIT = 25.0  # no pass of the gateway may take longer than this under any fault


# -- helpers -------------------------------------------------------------------------------


def package(home: Home, pid: str) -> Package:
    """One package's ledger row."""
    with gateway(home) as gw:
        return gw.ledger.package(pid)


def events(home: Home, pid: str | None = None) -> list[Event]:
    """The audit trail, for one package or all."""
    with gateway(home) as gw:
        return list(gw.ledger.events(pid))


def actions(home: Home, pid: str) -> list[str]:
    """The actions recorded for one package, in order."""
    return [e.action for e in events(home, pid)]


def drop(
    home: Home, tmp: Path, size: int, name: str = "notice.bin", clock: ManualClock | None = None
) -> str:
    """`gateway send` `size` random bytes to the partner; the package id.

    On a `clock` the test moves, a second passes after the send, as it would between two
    sends: package ids are ordered by time, and deliveries go in that order.
    """
    source = tmp / name
    source.write_bytes(os.urandom(size))
    pid = send(home, source, clock=clock)
    if clock is not None:
        clock.advance(1)
    return pid


def bounded(action: Callable[[], None], seconds: float, release: Callable[[], None]) -> float:
    """Run `action`, failing if it has not ended after `seconds`; return how long it took.

    A hung action is unblocked with `release()` (e.g. resetting the proxy's connections)
    so the test can fail cleanly instead of hanging the suite.
    """
    errors: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    worker = threading.Thread(target=target, name="bounded-action")
    started = time.monotonic()
    worker.start()
    worker.join(seconds)
    hung = worker.is_alive()
    if hung:
        release()
        worker.join(60)
    took = time.monotonic() - started
    if errors:
        raise errors[0]
    assert not hung, f"the pass did not end within {seconds:.0f} s (it took {took:.0f} s)"
    return took


def delivered_once(home: Home, server: SshServer, pids: list[str], tally: Tally) -> None:
    """Each package is `delivered`, on the partner exactly once under `<pid>.pgp` with the
    sealed bytes, and nothing else (no `.part`) is left in the upload folder."""
    names = remote_files(server)
    lost = duplicated = 0
    for pid in pids:
        row = package(home, pid)
        remote = server.upload / f"{pid}.pgp"
        here = remote.is_file() and sha256(remote.read_bytes()) == row.ciphertext_sha256
        if row.state is not State.DELIVERED or not here:
            lost += 1
        copies = [n for n in names if pid in n]  # <pid>.pgp, and any .part or stray copy
        duplicated += max(0, len(copies) - 1)
    tally.packages_checked(len(pids), lost, duplicated)
    assert names == sorted(f"{pid}.pgp" for pid in pids), "only final names on the partner"


# -- the gateway, wired to its partner through the fault proxy ----------------------------


@dataclasses.dataclass(frozen=True)
class Login:
    """Bytes each way when the gateway's SSH login is done, and when its SFTP session is open."""

    up: int
    up_sftp: int
    down_sftp: int


@dataclasses.dataclass
class Wired:
    """A gateway whose push partner is reached through a fault proxy."""

    home: Home
    pgp: PartnerPgp
    server: SshServer
    proxy: FaultProxy
    login: Login
    tmp: Path


def register(home: Home, pgp: PartnerPgp, server: SshServer, port: int) -> None:
    """Register the partner at 127.0.0.1:`port` with the real server's host key."""
    url = f"sftp://{server.user}@127.0.0.1:{port}"
    result = cli(home, "partner", "add", PARTNER_ID, "--openpgp-key", str(pgp.public_key),
                 "--fingerprint", pgp.fingerprint, "--push", url,
                 "--host-key", server.host_key_line, *TEST_REGIMES, "--reason", "test partner")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    server.authorize(home.ssh_identity_pub.read_text())
    pgp.trust_gateway(cli(home, "keys", "export", "--openpgp").stdout)


def measure_login(home: Home, proxy: FaultProxy) -> Login:
    """Log in once through the clean proxy, exactly as the gateway does, and count bytes."""
    seen: dict[str, int] = {}
    real = paramiko.SFTPClient.from_transport

    def spy(transport: paramiko.Transport, *args: Any, **kwargs: Any) -> Any:
        seen["up"] = proxy.connections[-1].sent[UP]  # authenticated; no channel yet
        return real(transport, *args, **kwargs)

    with gateway(home) as gw, pytest.MonkeyPatch.context() as patch:
        patch.setattr(paramiko.SFTPClient, "from_transport", spy)
        partner = gw.ledger.partner(PARTNER_ID)
        with gw.sessions.session(endpoint(partner)) as sftp:
            sftp.sftp.listdir(".")
            time.sleep(0.1)
            sent = proxy.connections[-1].sent
            login = Login(seen["up"], sent[UP], sent[DOWN])
    deadline = time.monotonic() + 5
    while proxy.live() and time.monotonic() < deadline:
        time.sleep(0.02)
    return login


@pytest.fixture
def wired(home: Home, partner_pgp: PartnerPgp, server: SshServer, short_tmp: Path) -> Iterator[Wired]:  # fmt: skip
    """The gateway, its partner behind a fault proxy, short network deadlines."""
    for name in ("sftp.connect_timeout_seconds", "sftp.io_timeout_seconds"):
        set_setting(home, name, DEADLINE)
    with FaultProxy(server.port) as proxy:
        register(home, partner_pgp, server, proxy.port)
        yield Wired(home, partner_pgp, server, proxy, measure_login(home, proxy), short_tmp)


# -- network faults between the gateway and the partner -----------------------------------

UPLOAD = 1_500_000  # bytes of payload: dozens of 32 KiB SFTP writes, so faults land mid-upload


NETWORK_FAULTS: dict[str, Callable[[Login], Fault]] = {
    "refused": lambda login: Fault.refuse(),
    "cut mid-upload, gateway to server": lambda login: Fault.cut(login.up_sftp + 400_000, UP),
    "cut mid-upload, server to gateway": lambda login: Fault.cut(login.down_sftp + 300, DOWN),
    "stall before the banner": lambda login: Fault.stall(),
    "stall mid-transfer": lambda login: Fault.stall(login.up_sftp + 400_000, UP),
    "drop after authentication": lambda login: Fault.cut(login.up, UP),
    "trickle below the handshake deadline": lambda login: Fault.trickle(20, DOWN),
}


#: Faults of a partner that never answers in time: what the operator reads must say it
#: timed out (SPEC section 10, last rule).
TIMEOUTS = ("stall before the banner", "trickle below the handshake deadline")


@pytest.mark.parametrize("case", NETWORK_FAULTS)
def test_network_fault_sets_back_then_delivers_exactly_once(
    wired: Wired, tally: Tally, case: str, clock: ManualClock
) -> None:
    home, server, proxy = wired.home, wired.server, wired.proxy
    pid = drop(home, wired.tmp, UPLOAD, clock=clock)
    proxy.set(NETWORK_FAULTS[case](wired.login))
    tally.fault(f"network: {case}")

    took = bounded(lambda: run_once(home, clock), PASS_LIMIT, proxy.release)

    faulted = [c for c in proxy.connections if c.fault.kind != "clean"]
    assert faulted, "the gateway connected through the fault"
    if faulted[0].fault.kind != "trickle":
        assert {c.outcome for c in faulted} & {"refused", "cut", "stalled"}, "the fault fired"
    if "mid-" in case:
        uploaded = faulted[0].sent[UP] - wired.login.up_sftp
        # Up to the whole file plus SSH framing: pipelined writes may all be out before the
        # cut, but the upload was not finished (closed and renamed), as the state shows.
        assert 64 * 1024 < uploaded < UPLOAD * 1.05, (
            f"the fault hit after {uploaded} bytes of upload"
        )
    waiting = package(home, pid)
    assert waiting.state is State.SEALED, f"{case}: {waiting.state} after {took:.1f} s"
    assert waiting.failures == 1 and waiting.next_attempt_at is not None
    assert "will retry" in str(waiting.last_error), waiting.last_error
    if case in TIMEOUTS:
        assert "timed out" in str(waiting.last_error), f"the operator reads: {waiting.last_error}"
    assert f"{pid}.pgp" not in remote_files(server), "no partial file under the final name"
    assert actions(home, pid).count("retry.scheduled") == 1

    proxy.set(Fault.clean())
    retry_due(home, pid, clock)
    run_once(home, clock)

    delivered_once(home, server, [pid], tally)
    assert actions(home, pid).count("deliver") == 1


def test_a_cut_mid_batch_records_what_arrived_and_sets_back_the_rest(
    wired: Wired, tally: Tally, clock: ManualClock
) -> None:
    """Deliveries are committed a group at a time: the cut must not lose the record of those
    placed before it. The small ones go up together first, then the large one, cut."""
    home, server, proxy = wired.home, wired.server, wired.proxy
    first = drop(home, wired.tmp, 20_000, clock=clock)
    second = drop(home, wired.tmp, UPLOAD, clock=clock)
    third = drop(home, wired.tmp, 20_000, clock=clock)
    proxy.set(Fault.cut(wired.login.up_sftp + 400_000, UP))  # in the middle of the second
    tally.fault("network: cut mid-batch")

    bounded(lambda: run_once(home, clock), PASS_LIMIT, proxy.release)

    assert [package(home, pid).state for pid in (first, third)] == [State.DELIVERED] * 2
    assert sorted(n for n in remote_files(server) if not n.startswith(".")) == sorted(
        [f"{first}.pgp", f"{third}.pgp"]
    )
    waiting = package(home, second)
    assert (waiting.state, waiting.failures) == (State.SEALED, 1)
    assert actions(home, second).count("retry.scheduled") == 1
    proxy.set(Fault.clean())
    retry_due(home, second, clock)
    run_once(home, clock)
    delivered_once(home, server, [first, second, third], tally)
    assert [actions(home, pid).count("deliver") for pid in (first, second, third)] == [1, 1, 1]


# -- a large package, uploaded while it is sealed ----------------------------------------

STREAMED = ("refused", "cut mid-upload, gateway to server", "stall mid-transfer")


@pytest.mark.parametrize("case", STREAMED)
def test_a_fault_while_streaming_leaves_it_sealed_for_the_partner_turn(
    wired: Wired, tally: Tally, monkeypatch: pytest.MonkeyPatch, case: str, clock: ManualClock
) -> None:
    """The upload beside gpg fails: the package is sealed all the same, nothing shows on the
    partner, and the ordinary turn delivers it later, once."""
    monkeypatch.setattr(delivery, "STREAM_FROM", 1024 * 1024)
    home, server, proxy = wired.home, wired.server, wired.proxy
    pid = drop(home, wired.tmp, UPLOAD, clock=clock)
    proxy.set(NETWORK_FAULTS[case](wired.login))
    tally.fault(f"network while streaming: {case}")

    bounded(lambda: run_once(home, clock), PASS_LIMIT, proxy.release)

    faulted = [c for c in proxy.connections if c.fault.kind != "clean"]
    assert len(faulted) >= 2, "a session beside gpg, then the partner's turn"
    assert faulted[0].outcome in {"refused", "cut", "stalled"}, "the fault hit the first"
    waiting = package(home, pid)
    assert (waiting.state, waiting.failures) == (State.SEALED, 1), waiting.last_error
    assert f"{pid}.pgp" not in remote_files(server), "no partial file under the final name"
    assert not any(home.work.iterdir()), "sealed: the plaintext is erased"

    proxy.set(Fault.clean())
    retry_due(home, pid, clock)
    run_once(home, clock)
    delivered_once(home, server, [pid], tally)
    assert actions(home, pid).count("deliver") == 1


def test_a_crash_after_sealed_before_the_rename_is_uploaded_again_once(
    wired: Wired, tally: Tally, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole file is on the partner under its hidden name when the gateway dies: the
    next pass uploads it again over the part and renames it; nothing shows twice."""
    monkeypatch.setattr(delivery, "STREAM_FROM", 1024 * 1024)
    home, server = wired.home, wired.server
    pid = drop(home, wired.tmp, UPLOAD)

    def crash(*args: object) -> None:
        raise SystemExit("the gateway died")

    with monkeypatch.context() as patched:
        patched.setattr(SftpPartner, "place", crash)
        with pytest.raises(SystemExit):
            run_once(home)
    tally.fault("crash between `sealed` and the rename of a streamed upload")

    left = package(home, pid)
    assert left.state is State.SEALED and left.failures == 0
    assert remote_files(server) == [f".{pid}.pgp.part"]
    assert (server.upload / f".{pid}.pgp.part").stat().st_size == left.ciphertext_size

    run_once(home)
    delivered_once(home, server, [pid], tally)
    assert actions(home, pid).count("deliver") == 1


def test_trickle_that_keeps_moving_delivers_in_one_pass(wired: Wired, tally: Tally) -> None:
    home, server, proxy = wired.home, wired.server, wired.proxy
    pid = drop(home, wired.tmp, 150_000)
    proxy.set(Fault.trickle(100_000, UP, after=wired.login.up_sftp))
    tally.fault("network: trickle at 100 kB/s during the upload")

    took = bounded(lambda: run_once(home), PASS_LIMIT, proxy.release)

    assert took > 1.0, "the trickle did slow the upload"
    delivered_once(home, server, [pid], tally)
    assert package(home, pid).failures == 0


# -- the partner's side ---------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted over `path` (emptying it, as seen) for the duration."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs, which only root can mount")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    try:
        yield path
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False)
        if done.returncode != 0:  # something still has a file open there
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=True)


def resize(path: Path, size: str) -> None:
    """Give a tmpfs from `tmpfs()` a new size: space returns."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)],
                   check=True, capture_output=True, timeout=30)  # fmt: skip


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of `folder` up, then free `leave` bytes; the filler file."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    with filler.open("r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


def test_partner_down_for_several_passes_then_back_gets_it_once(
    wired: Wired, tally: Tally, clock: ManualClock
) -> None:
    home, server, proxy = wired.home, wired.server, wired.proxy
    pid = drop(home, wired.tmp, 50_000, clock=clock)
    server.stop()
    tally.fault("partner: server down for three passes")

    for attempt in (1, 2, 3):
        bounded(lambda: run_once(home, clock), PASS_LIMIT, proxy.release)
        waiting = package(home, pid)
        assert (waiting.state, waiting.failures) == (State.SEALED, attempt)
        assert "will retry" in str(waiting.last_error)
        retry_due(home, pid, clock)

    server.start()
    run_once(home, clock)

    delivered_once(home, server, [pid], tally)


def test_partner_disk_full_mid_upload_then_space_returns(
    wired: Wired, tally: Tally, clock: ManualClock
) -> None:
    home, server, proxy = wired.home, wired.server, wired.proxy
    pid = drop(home, wired.tmp, UPLOAD, clock=clock)
    with tmpfs(server.upload, "512k"):
        tally.fault("partner: its disk fills up mid-upload (a 512 KiB tmpfs)")
        bounded(lambda: run_once(home, clock), PASS_LIMIT, proxy.release)

        waiting = package(home, pid)
        assert (waiting.state, waiting.failures) == (State.SEALED, 1)
        assert "will retry" in str(waiting.last_error)
        assert f"{pid}.pgp" not in remote_files(server), "no partial file under the final name"

        resize(server.upload, "16m")
        retry_due(home, pid, clock)
        run_once(home, clock)

        delivered_once(home, server, [pid], tally)


def test_different_file_already_under_the_name_is_held_not_overwritten(
    wired: Wired, tally: Tally
) -> None:
    home, server = wired.home, wired.server
    pid = drop(home, wired.tmp, 50_000)
    squatter = server.upload / f"{pid}.pgp"
    squatter.write_bytes(b"someone else's bytes")
    tally.fault("partner: another file already holds the package's name")

    run_once(home)

    held = package(home, pid)
    assert held.state is State.HELD
    assert "other content" in str(held.last_error) and "nothing was" in str(held.last_error)
    assert squatter.read_bytes() == b"someone else's bytes", "not overwritten"
    assert remote_files(server) == [f"{pid}.pgp"], "and nothing uploaded beside it"
    shown = json.loads(cli(home, "partner", "show", PARTNER_ID, "--json").stdout)
    assert shown["health"] == "failing" and "other content" in shown["last_problem"]
    assert home.sealed_file(pid).is_file(), "the sealed package is kept"

    squatter.unlink()  # the partner clears it; the operator releases the package
    assert cli(home, "retry", pid, "--reason", "partner removed its file").exit_code == 0
    run_once(home)

    delivered_once(home, server, [pid], tally)


class Ingest(threading.Thread):
    """The partner's ingest: takes every `*.pgp` from the upload folder the moment it appears."""

    def __init__(self, folder: Path) -> None:
        super().__init__(name="partner-ingest")
        self.folder = folder
        self.taken: list[tuple[str, str]] = []  # (name, sha256)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for path in self.folder.glob("*.pgp"):
                data = path.read_bytes()
                path.unlink()
                self.taken.append((path.name, sha256(data)))
            time.sleep(0.001)

    def __enter__(self) -> Ingest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join(5)


def test_partner_ingest_taking_the_file_at_once_is_still_delivered_once(
    wired: Wired, tally: Tally
) -> None:
    home, server = wired.home, wired.server
    pid = drop(home, wired.tmp, UPLOAD)
    with Ingest(server.upload) as ingest:
        tally.fault("partner: ingest removes the file as soon as it is renamed into place")
        run_once(home)
        wait_for(lambda: bool(ingest.taken), 5, "the partner's ingest to take the file")
        run_once(home)  # a second pass must not send it again

    row = package(home, pid)
    assert row.state is State.DELIVERED and row.failures == 0, row.last_error
    assert actions(home, pid).count("deliver") == 1
    copies = [name for name, digest in ingest.taken if digest == row.ciphertext_sha256]
    assert ingest.taken == [(f"{pid}.pgp", row.ciphertext_sha256)], ingest.taken
    tally.packages_checked(1, lost=1 - min(1, len(copies)), duplicated=max(0, len(copies) - 1))
    assert remote_files(server) == [], "no .part left behind"


# -- the gateway's own host ----------------------------------------------------------------


@pytest.fixture
def spool_on_tmpfs(wired: Wired) -> Iterator[Path]:
    """The gateway's spool on an 8 MiB tmpfs of its own (all its states on one file system)."""
    home = wired.home
    with tmpfs(home.spool, "8m"):
        home.create_folders()
        home.create_partner_folders(PARTNER_ID)
        yield home.spool


def test_spool_full_during_send_is_refused_clearly_and_takes_nothing(
    wired: Wired, spool_on_tmpfs: Path, tally: Tally
) -> None:
    home = wired.home
    source = wired.tmp / "notice.bin"
    source.write_bytes(payload := os.urandom(UPLOAD))
    filler = fill(spool_on_tmpfs, leave=256 * 1024)
    tally.fault("host: spool full during `gateway send`")

    result = cli(home, "send", str(source), "--to", PARTNER_ID, "--kind", "conviction")

    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "error: " in result.stderr
    assert "No space left on device" in result.stderr and "free disk space" in result.stderr
    assert source.read_bytes() == payload, "the original is untouched"
    assert list(home.work.iterdir()) == [], "no half copy left in the spool"
    with gateway(home) as gw:
        assert gw.ledger.packages() == [], "nothing was accepted, so nothing can be lost"

    filler.unlink()  # space returns
    pid = send(home, source)
    run_once(home)
    delivered_once(home, wired.server, [pid], tally)


def test_spool_full_during_intake_from_the_outbound_folder_loses_nothing(
    wired: Wired, spool_on_tmpfs: Path, tally: Tally, clock: ManualClock
) -> None:
    home = wired.home
    folder = home.outbound / PARTNER_ID / "conviction"
    (folder / "notice.xml.part").write_bytes(payload := os.urandom(100_000))
    os.rename(folder / "notice.xml.part", folder / "notice.xml")
    filler = fill(spool_on_tmpfs)
    tally.fault("host: spool full when a dropped file is taken in")

    result = cli(home, "run", "--once", clock=clock)

    # The pass goes on with everything else; the file waits for space, and says why.
    assert result.exit_code == 0, result.stderr
    assert "intake paused" in result.stderr and "No space left on device" in result.stderr
    assert (folder / "notice.xml").read_bytes() == payload, "left where the producer put it"
    assert not any(home.work.iterdir()), "nothing half-taken left in the gateway's own area"
    with gateway(home) as gw:
        assert gw.ledger.packages() == []

    filler.unlink()
    run_once(home, clock)

    assert not (folder / "notice.xml").exists()
    with gateway(home) as gw:
        [row] = gw.ledger.packages()
    assert row.payload_sha256 == sha256(payload)
    delivered_once(home, wired.server, [row.package_id], tally)


@pytest.mark.parametrize("size", [5_000, UPLOAD])
def test_spool_full_during_sealing_waits_and_seals_when_space_returns(
    wired: Wired, spool_on_tmpfs: Path, tally: Tally, size: int, clock: ManualClock
) -> None:
    home = wired.home
    pid = drop(home, wired.tmp, size, clock=clock)
    filler = fill(spool_on_tmpfs)
    tally.fault(f"host: spool full while GnuPG writes a sealed package of {size} bytes")

    run_once(home, clock)

    waiting = package(home, pid)
    assert waiting.state is State.RECEIVED, f"{waiting.state}: {waiting.last_error}"
    assert waiting.failures == 1 and waiting.next_attempt_at is not None
    assert "space" in str(waiting.last_error), waiting.last_error
    assert (home.work / pid / "payload").is_file(), "the plaintext waits in the spool"
    assert list(home.sealed.iterdir()) == [], "no half-written sealed file"
    assert remote_files(wired.server) == []

    filler.unlink()
    retry_due(home, pid, clock)
    run_once(home, clock)

    delivered_once(home, wired.server, [pid], tally)
    assert list(home.work.iterdir()) == [], "plaintext erased once sealed"


def test_daemon_keeps_running_through_a_full_spool(
    wired: Wired, spool_on_tmpfs: Path, tally: Tally
) -> None:
    home = wired.home
    for name, value in (("daemon.settle_seconds", 1), ("daemon.scan_seconds", 1),
                        ("retry.first_delay_seconds", 1), ("retry.max_delay_seconds", 2)):  # fmt: skip
        set_setting(home, name, value)
    folder = home.outbound / PARTNER_ID / "conviction"
    (folder / "notice.xml.part").write_bytes(payload := os.urandom(100_000))
    os.rename(folder / "notice.xml.part", folder / "notice.xml")
    filler = fill(spool_on_tmpfs)
    daemon = DaemonProcess(home)
    tally.fault("host: spool full while the daemon runs")
    try:
        daemon.start()
        time.sleep(4)
        assert daemon.process is not None
        alive = daemon.process.poll() is None
        filler.unlink()
        if alive:
            wait_for(lambda: not (folder / "notice.xml").exists(), 30, "the file taken in")
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.terminate()
    log = daemon.log.read_text()
    assert alive, f"the daemon died of a full spool: {log[-3000:]}"
    assert "No space left on device" in log
    with gateway(home) as gw:
        [row] = gw.ledger.packages()
    assert row.payload_sha256 == sha256(payload)


STUB_GPG = """#!/usr/bin/python3
# A gpg that hangs: it answers --version and --list-config, then sleeps {where}.
import os, sys, time
args = sys.argv[1:]
if "--version" in args or "--list-config" in args or ({only_seal} and "--encrypt" not in args):
    os.execv("/usr/bin/gpg", ["/usr/bin/gpg", *args])
time.sleep(3600)
"""


def zombies() -> list[int]:
    """Children of this process that exited and were never reaped."""
    mine = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and fields[1] == mine:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("where", ["on every call", "while sealing"])
def test_hanging_gpg_is_killed_and_the_package_waits(
    wired: Wired, tally: Tally, monkeypatch: pytest.MonkeyPatch, where: str, clock: ManualClock
) -> None:
    home = wired.home
    pid = drop(home, wired.tmp, UPLOAD, clock=clock)
    stub = wired.tmp / "bin" / "gpg"
    stub.parent.mkdir()
    stub.write_text(STUB_GPG.format(where=where, only_seal=where == "while sealing"))
    stub.chmod(0o755)
    set_setting(home, "gnupg.timeout_seconds", 2)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    tally.fault(f"host: gpg hangs {where}")

    took = bounded(lambda: run_once(home, clock), PASS_LIMIT, lambda: None)

    assert took < 15, f"the pass took {took:.0f} s"
    waiting = package(home, pid)
    assert waiting.state is State.RECEIVED, f"{waiting.state}: {waiting.last_error}"
    assert waiting.failures == 1 and waiting.next_attempt_at is not None
    assert "GnuPG took longer than 2 s" in str(waiting.last_error), waiting.last_error
    assert (home.work / pid / "payload").is_file(), "the plaintext waits"
    assert list(home.sealed.iterdir()) == []
    assert processes_under(stub) == [], "no stub gpg left running"
    assert zombies() == [], "no gpg left unreaped"

    monkeypatch.undo()
    set_setting(home, "gnupg.timeout_seconds", 60)
    retry_due(home, pid, clock)
    run_once(home, clock)

    delivered_once(home, wired.server, [pid], tally)


def test_ledger_locked_by_another_writer_waits_then_succeeds(wired: Wired, tally: Tally) -> None:
    home = wired.home
    pid = drop(home, wired.tmp, 50_000)
    locked, hold = threading.Event(), 4.0

    def writer() -> None:
        conn = sqlite3.connect(home.ledger, timeout=5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(hold)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    other = threading.Thread(target=writer, name="other-writer")
    other.start()
    assert locked.wait(5)
    tally.fault(f"host: ledger write-locked by another connection for {hold:.0f} s")
    try:
        took = bounded(lambda: run_once(home), PASS_LIMIT + hold, lambda: None)
    finally:
        other.join(10)

    assert took >= hold - 1, "the pass did wait for the lock"
    delivered_once(home, wired.server, [pid], tally)
    assert package(home, pid).failures == 0, "waiting is not a failure"
    with gateway(home) as gw:
        assert gw.ledger.verify_chain()[1] is None


# -- hostile partners ------------------------------------------------------------------------


@pytest.fixture
def desk(wired: Wired) -> Desk:
    """The partner's desk, where tests.helpers builds packages and receipts as a partner does."""
    home = wired.home
    with gateway(home) as gw:
        fpr = gw.own_key
    wired.pgp.gpg("--quick-lsign-key", fpr)
    return Desk(home, wired.pgp, wired.pgp, wired.server, fpr, wired.tmp)


def test_changed_host_key_after_the_first_connection_sends_and_fetches_nothing(
    wired: Wired, desk: Desk, tally: Tally
) -> None:
    home, server = wired.home, wired.server
    first, digest = delivered(desk)
    old_key = server.host_key_line
    server.replace_host_key()
    server.stop()
    server.start()
    assert server.host_key_line != old_key
    second = drop(home, wired.tmp, 50_000, "second.bin")
    receipt = leave(desk, f"{first}.receipt", sign(desk.pgp, receipt_json(first, digest)))
    tally.hostile_input("the partner's server shows another SSH host key")

    run_once(home)

    held = package(home, second)
    assert held.state is State.HELD, held.last_error
    assert "SSH host key" in str(held.last_error) and "not the one pinned" in str(held.last_error)
    shown = subprocess.run(["ssh-keygen", "-lf", str(server.host_key_path)], capture_output=True,
                           text=True, check=True).stdout.split()[1]  # fmt: skip
    assert shown in str(held.last_error), "the message names the key that was shown"
    assert remote_files(server) == [f"{first}.pgp"], "nothing sent"
    assert receipt.exists(), "nothing fetched"
    assert package(home, first).state is State.DELIVERED
    assert home.sealed_file(second).is_file()
    tally.packages_checked(1, lost=0 if home.sealed_file(second).is_file() else 1, duplicated=0)


def junk_names(count: int, pid: str) -> list[str]:
    """`count` names outside the contract: junk, control characters, dots, near misses."""
    near = [f"{pid}.pgp.part", f".{pid}.pgp", f"{pid}.PGP", f"{pid.lower()}.pgp", f"{pid}.pgp ",
            f" {pid}.pgp", f"{pid}.receipt~", f"{pid}.receipt\n", f"{pid}\n.pgp", f"{pid}.pgp\r",
            f"{pid}0.pgp", f"{pid[:-1]}.pgp", f"{pid}.pgp.pgp", f"{pid}.receipt.receipt",
            f"{pid}..pgp", f"..{pid}.pgp", f"...{pid}.receipt", "...", "..pgp", "..receipt",
            "\x1b[31mred.pgp", "\x7f.pgp", "tab\there.receipt", "bell\x07.pgp", "nl\nnl.receipt",
            "-rf.pgp", "~.pgp", f"{pid}.pgp\x01", "US-NCB-.._..pgp", f"\u202e{pid}.pgp",
            f"{pid}.pgp\u200b", pid.replace("0", "\uff10") + ".pgp"]  # fmt: skip
    names = list(dict.fromkeys(near))
    names += [f"junk-{n:05d}{'..' if n % 7 == 0 else ''}.{'pgp' if n % 2 else 'txt'}"
              for n in range(count - len(names))]  # fmt: skip
    return names


def test_ten_thousand_names_outside_the_contract_are_left_alone(desk: Desk, tally: Tally) -> None:
    home, server = desk.home, desk.server
    pid, digest = delivered(desk)
    names = junk_names(10_000, pid)
    for name in names:
        (server.download / name).write_bytes(b"junk")
    other = f"{PARTNER_ID}-{new_ulid(time.time())}"
    (server.download / f"{other}.pgp").mkdir()  # contract names on things that are not files
    (server.download / f"{other}.receipt").symlink_to("/etc/passwd")
    os.mkfifo(server.download / f"{PARTNER_ID}-{new_ulid(time.time())}.pgp")
    (server.download / f"{PARTNER_ID}-{new_ulid(time.time())}.receipt").symlink_to(server.root)
    specials = 4
    leave(desk, f"{pid}.receipt", sign(desk.pgp, receipt_json(pid, digest)))
    before = [e for e in events(home) if e.package_id != pid]
    tally.hostile_input("names outside the contract in the download folder", len(names))
    tally.hostile_input("contract names on a folder, a FIFO and symbolic links", specials)

    took = bounded(lambda: run_once(home), PASS_LIMIT, desk.server.stop)

    assert package(home, pid).state is State.ACKNOWLEDGED, "the good receipt among them is handled"
    assert [e for e in events(home) if e.package_id != pid] == before, "nothing else recorded"
    assert len(os.listdir(server.download)) == len(names) + specials, "all left on the server"
    assert all((server.download / n).read_bytes() == b"junk" for n in names[:50])
    assert quarantined(home) == []
    assert list((home.incoming / PARTNER_ID).iterdir()) == [], "nothing fetched"
    with gateway(home) as gw:
        assert gw.ledger.packages(direction="in") == []
    assert took < PASS_LIMIT


def test_names_that_are_not_utf8_do_not_stop_the_poll(desk: Desk, tally: Tally) -> None:
    home, server = desk.home, desk.server
    pid, digest = delivered(desk)
    for raw in (b"\xff\xfe.pgp", b"caf\xe9.receipt", os.fsencode(f"{pid}.pgp") + b"\x80"):
        with open(os.path.join(os.fsencode(server.download), raw), "wb") as f:
            f.write(b"junk")
    leave(desk, f"{pid}.receipt", sign(desk.pgp, receipt_json(pid, digest)))
    tally.hostile_input("download folder names that are not UTF-8", 3)

    run_once(home)

    assert package(home, pid).state is State.ACKNOWLEDGED, "the good receipt is still handled"
    assert len(os.listdir(os.fsencode(server.download))) == 3, "the odd names are left alone"
    assert quarantined(home) == []


def bomb(desk: Desk, pid: str, size: int) -> bytes:
    """A package signed by the partner whose zlib-compressed plaintext is `size` bytes of
    tar: a correct manifest for a payload of zeros that fills the rest."""
    payload = size - 3 * 512 - 1024 * 2
    doc = manifest(desk, pid, payload={"name": PAYLOAD_NAME, "size": payload,
                                       "sha256": hashlib.sha256(b"").hexdigest()})  # fmt: skip
    out = desk.tmp / f"{pid}.bomb"
    with subprocess.Popen(
        ["gpg", "--homedir", str(desk.pgp.home), "--batch", "--yes", "--local-user",
         desk.pgp.fingerprint, "--recipient", desk.gateway_fpr, "--compress-algo", "zlib",
         "--compress-level", "9", "--sign", "--encrypt", "--output", str(out)],
        stdin=subprocess.PIPE, stderr=subprocess.DEVNULL,
    ) as gpg:  # fmt: skip
        assert gpg.stdin is not None
        with tarfile.open(fileobj=gpg.stdin, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            head, data = member("manifest.json", json.dumps(doc).encode())
            archive.addfile(head, io.BytesIO(data))
            info = tarfile.TarInfo(f"payload/{PAYLOAD_NAME}")
            info.size, info.mode, info.mtime = payload, 0o600, int(time.time())
            archive.addfile(info, Zeros(payload))
        gpg.stdin.close()
        assert gpg.wait(120) == 0
    wire = out.read_bytes()
    out.unlink()
    assert len(wire) < 2 * 1024**2, "small enough to be fetched"
    return wire


class Zeros(io.RawIOBase):
    """`size` zero bytes, read without ever holding them all."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def device(name: str) -> tuple[tarfile.TarInfo, bytes]:
    """A character-device member (as /dev/null)."""
    info, _ = member(name, b"")
    info.type, info.devmajor, info.devminor, info.size = tarfile.CHRTYPE, 1, 3, 0
    return info, b""


def typed(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, bytes]:
    """A member of another type: FIFO, folder, hard or symbolic link."""
    info, _ = member(name, b"")
    info.type, info.size, info.linkname = kind, 0, target
    return info, b""


def archive(desk: Desk, pid: str, *members: tuple[tarfile.TarInfo, bytes], doc: dict[str, Any] | None = None) -> bytes:  # fmt: skip
    """A sealed tar of the partner's correct manifest (or `doc`) then `members`."""
    head = member("manifest.json", json.dumps(doc or manifest(desk, pid)).encode())
    return seal(desk, tar(head, *members))


ESCAPE = "/tmp/gateway-fault-escaped"  # an absolute member name: must never be written
PAYLOAD_MEMBER = f"payload/{PAYLOAD_NAME}"

HOSTILE_ARCHIVES: dict[str, tuple[Callable[[Desk, str], bytes], str]] = {
    "an extra member after the payload": (
        lambda d, p: archive(d, p, member(PAYLOAD_MEMBER, PAYLOAD), member("payload/more", b"x")),
        r"more than manifest.json and the payload"),
    "an absolute member name": (
        lambda d, p: archive(d, p, member(ESCAPE, PAYLOAD)), r"second member"),
    "an absolute member after the payload": (
        lambda d, p: archive(d, p, member(PAYLOAD_MEMBER, PAYLOAD), member(ESCAPE, b"x")),
        r"more than manifest.json"),
    "a '..' member name": (
        lambda d, p: archive(d, p, member("payload/../../escaped", PAYLOAD)), r"second member"),
    "a manifest naming a '..' payload": (
        lambda d, p: archive(d, p, member("payload/../escaped", PAYLOAD),
                             doc=manifest(d, p, payload={"name": "../escaped", "size": len(PAYLOAD),
                                                         "sha256": hashlib.sha256(PAYLOAD).hexdigest()})),
        r"manifest is invalid"),
    "a hard link as the payload": (
        lambda d, p: archive(d, p, typed(PAYLOAD_MEMBER, tarfile.LNKTYPE, "manifest.json")),
        r"second member"),
    "a symbolic link as the payload": (
        lambda d, p: archive(d, p, typed(PAYLOAD_MEMBER, tarfile.SYMTYPE, "/etc/shadow")),
        r"second member"),
    "a symbolic link after the payload": (
        lambda d, p: archive(d, p, member(PAYLOAD_MEMBER, PAYLOAD), typed("payload/l", tarfile.SYMTYPE, "/")),
        r"more than manifest.json"),
    "a character device as the payload": (
        lambda d, p: archive(d, p, device(PAYLOAD_MEMBER)), r"second member"),
    "a character device after the payload": (
        lambda d, p: archive(d, p, member(PAYLOAD_MEMBER, PAYLOAD), device("payload/null")),
        r"more than manifest.json"),
    "a FIFO as the payload": (
        lambda d, p: archive(d, p, typed(PAYLOAD_MEMBER, tarfile.FIFOTYPE)), r"second member"),
    "a folder as the payload": (
        lambda d, p: archive(d, p, typed(PAYLOAD_MEMBER, tarfile.DIRTYPE)), r"second member"),
    "a manifest larger than 64 KiB": (
        lambda d, p: seal(d, tar(member("manifest.json", json.dumps(manifest(d, p)).encode() + b" " * 70_000),
                                 member(PAYLOAD_MEMBER, PAYLOAD))),
        r"manifest.json is larger than 65536 bytes"),
    # Refused for its size, not for a signature it does carry.
    "a zlib bomb far larger than daemon.max_package_bytes": (
        lambda d, p: bomb(d, p, 200 * 1024**2), r"larger|limit|too large|max"),
}  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE_ARCHIVES)
def test_hostile_archive_is_rejected_quarantined_and_delivers_nothing(
    desk: Desk, tally: Tally, case: str
) -> None:
    home = desk.home
    set_setting(home, "daemon.max_package_bytes", 1024**2)
    build, reason = HOSTILE_ARCHIVES[case]
    pid = partner_pid()
    wire = leave(desk, f"{pid}.pgp", build(desk, pid)).read_bytes()
    tally.hostile_input(f"inbound archive: {case}")

    took = bounded(lambda: run_once(home), PASS_LIMIT, desk.server.stop)

    row = package(home, pid)
    assert row.state is State.REJECTED, f"{row.state}: {row.last_error}"
    assert re.search(reason, str(row.last_error)), row.last_error
    assert list((home.inbound / PARTNER_ID).iterdir()) == [], "nothing delivered"
    assert list(home.work.iterdir()) == [] and list((home.incoming / PARTNER_ID).iterdir()) == []
    assert not os.path.lexists(ESCAPE) and not (home.spool / "escaped").exists()
    report, kept = only_quarantined(home)
    assert report["package_id"] == pid and report["reason"] == row.last_error and kept == wire
    assert not (desk.server.download / f"{pid}.pgp").exists(), "fetched, then removed"
    assert took < PASS_LIMIT


@pytest.mark.parametrize("suffix", [".receipt", ".pgp"])
def test_a_hundred_megabyte_file_is_refused_unfetched_and_removed(
    desk: Desk, tally: Tally, suffix: str
) -> None:
    home, server = desk.home, desk.server
    set_setting(home, "daemon.max_package_bytes", 1024**2)
    pid = partner_pid() if suffix == ".pgp" else delivered(desk)[0]
    huge = server.download / f"{pid}{suffix}"
    with huge.open("wb") as f:
        f.truncate(100 * 1024**2)  # sparse: 100 MB to anyone who asks its size
    tally.hostile_input(f"a 100 MB {suffix} in the download folder")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB

    took = bounded(lambda: run_once(home), PASS_LIMIT, server.stop)

    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
    assert grown < 50 * 1024, f"peak memory grew by {grown // 1024} MiB"
    refused = [json.loads(str(e.detail)) for e in events(home) if e.action == "fetch.refused"]
    assert refused == [{"name": huge.name, "size": 100 * 1024**2,
                        "reason": refused[0]["reason"]}], refused  # fmt: skip
    assert "larger than" in refused[0]["reason"]
    assert not huge.exists(), "removed from the partner's server"
    assert list((home.incoming / PARTNER_ID).iterdir()) == [], "never fetched"
    assert quarantined(home) == []
    if suffix == ".receipt":
        assert package(home, pid).state is State.DELIVERED, "the package is unchanged"
    assert took < PASS_LIMIT
