"""Thread churn: a long-running daemon must end where it started after many short-lived threads.

Each drop-server login runs on threads of its own (paramiko's transport thread asks the
ledger whether the key is the partner's and where its mailbox is), and so does each of a
poll's handlers of what it fetched. Each of those threads opens its own ledger connection;
one kept after its thread ended was a leak that grew with every login. Here `gateway run`
runs in this process, a pull partner logs in 200 times (good and refused logins) while a
push partner on a real sshd is polled at least 20 times, with a file to fetch and handle
each time; once those threads are gone, this process's descriptors and the ledger's
connections must be back where they were. With every thread's connection kept, the count
went from 47 to 487 descriptors (220 connections of two each: 200 logins, 20 handlers).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from gateway.adapters.home import Home
from gateway.app.gateway import Gateway
from gateway.core.names import new_package_id
from tests.helpers import (
    PARTNER_ID,
    TEST_REGIMES,
    ManualClock,
    PartnerPgp,
    cli,
    gateway,
    set_setting,
    wait_for,
)
from tests.sshd import SshServer, free_port

PULL_ID = "AU-AFP"
LOGINS = 200
POLLS = 20
#: Sessions held open at once before the count is taken (see the test for why).
BURST = 12


def descriptors() -> dict[int, str]:
    """This process's open file descriptors and what each is, at rest.

    The daemon keeps working while we look (a pull partner's turn lists its mailbox, a
    poll lists the partner's folder), so one look may catch a descriptor open for a moment:
    of 25 looks over a quarter of a second, the one with the fewest is the count at rest.
    """
    looks = []
    for _ in range(25):
        found = {}
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # listdir's own, closed by now
                found[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        looks.append(found)
        time.sleep(0.01)
    return min(looks, key=len)


def churning() -> list[threading.Thread]:
    """The churn's threads still alive: drop-server sessions (paramiko's server side, the
    drop server's own watch of each, SFTP subsystems) and a poll's handlers."""
    return [t for t in threading.enumerate()
            if t.name == "drop-session" or t.name.startswith("handle-")
            or isinstance(t, paramiko.SubsystemHandler)
            or (isinstance(t, paramiko.Transport) and t.server_mode)]  # fmt: skip


def keygen(path: Path) -> Path:
    """A fresh unencrypted ed25519 key pair; returns the private key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True, capture_output=True, timeout=30)  # fmt: skip
    return path


class Client:
    """paramiko's SFTP client logging in to the drop server, as a partner (or not) would."""

    def __init__(self, home: Home, port: int) -> None:
        kind, blob = home.host_key_pub.read_text().split()[:2]
        self.pinned = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        self.port = port

    @contextlib.contextmanager
    def session(self, user: str, key: Path) -> Iterator[paramiko.SFTPClient | None]:
        """An SFTP session as `user` with `key`, closed after; None if the login was refused."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with paramiko.Transport(sock) as transport:
            pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
            try:
                transport.connect(hostkey=self.pinned, username=user, pkey=pkey)
            except paramiko.AuthenticationException:
                yield None
                return
            sftp = paramiko.SFTPClient.from_transport(transport)
            assert sftp is not None
            try:
                yield sftp
            finally:
                sftp.close()

    def login(self, user: str, key: Path) -> list[str] | None:
        """Log in, list /download and log out; None if the login was refused."""
        with self.session(user, key) as sftp:
            return None if sftp is None else sftp.listdir("/download")


class Daemon:
    """`gateway run` on a thread of this process, stopped as `gateway run` is on SIGTERM."""

    def __init__(self, gw: Gateway) -> None:
        self.stop = threading.Event()
        self.daemon = gw.daemon(self.stop)
        self.thread = threading.Thread(target=self.daemon.run, name="daemon")

    def __enter__(self) -> Daemon:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the daemon did not stop"


@pytest.fixture
def churn_home(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> Iterator[tuple[Home, SshServer, Path, int]]:
    """The gateway with a push partner on a real sshd polled every second, and a pull partner
    its drop server serves: the home, the sshd, the pull partner's SSH key, the drop port."""
    home, _, server = exchange
    pull = PartnerPgp(short_tmp / "au", PULL_ID)
    try:
        key = keygen(short_tmp / "au_key")
        added = cli(home, "partner", "add", PULL_ID, "--openpgp-key", str(pull.public_key),
                    "--fingerprint", pull.fingerprint, "--pull", "--ssh-key", f"{key}.pub",
                    *TEST_REGIMES, "--reason", "thread churn")  # fmt: skip
        assert added.exit_code == 0, added.stderr
        port = free_port()
        for name, value in (
            ("serve.listen", f"127.0.0.1:{port}"),
            ("daemon.poll_seconds", 1),  # the least there is; the test moves the clock
            # One worker: a second would open its (lasting) ledger connection when it first
            # got a job, which might be only after the count at the start was taken.
            ("daemon.workers", 1),
            # The drop server looks for ended sessions twice a second, and the refused
            # logins must not get 127.0.0.1 banned.
            ("serve.max_connections", LOGINS),
            ("serve.max_sessions_per_partner", LOGINS),  # the warm-up holds a dozen at once
            ("serve.ban_after_failures", 10 * LOGINS),
        ):
            set_setting(home, name, value)
        yield home, server, key, port
    finally:
        pull.close()


def leave_junk(server: SshServer) -> None:
    """Leave the push partner's next file: a `<package_id>.pgp` that is no OpenPGP message,
    which a poll fetches and a handler thread rejects and records in the ledger.

    Plain text, not random bytes: those may parse as an OpenPGP literal packet whose file
    name is not UTF-8, which gpg echoes in a status line that python-gnupg's reader thread
    dies on; `Keyring.open_message` then fails with AttributeError instead of rejecting, and
    the file is fetched again on every poll (a product bug, reported).
    """
    name = f"{new_package_id(PARTNER_ID, time.time())}.pgp"
    tmp = server.download / f".{name}.writing"
    tmp.write_bytes(b"not an OpenPGP message\n" * 100)
    os.rename(tmp, server.download / name)


def test_descriptors_and_connections_return_after_logins_and_polls(
    churn_home: tuple[Home, SshServer, Path, int], short_tmp: Path, clock: ManualClock
) -> None:
    """The daemon runs on a clock the test moves a second at a time, then wakes it: the
    next poll is due at once, so 20 polls take as long as they take, not 20 s."""
    home, server, key, port = churn_home
    wrong = keygen(short_tmp / "wrong_key")
    client = Client(home, port)
    with gateway(home, "daemon", clock) as gw, Daemon(gw) as running:

        def next_poll() -> None:
            """Leave the next file, move the clock to the next poll and wake the daemon
            (else it would look only after its one-second wait)."""
            leave_junk(server)
            clock.advance(1.0)
            running.daemon.wake()

        def polls() -> int:
            """Polls of the push partner that took a file: each one is in the ledger."""
            return len(gw.ledger.packages(partner=PARTNER_ID, direction="in"))

        def taken() -> bool:
            return not os.listdir(server.download)

        def up() -> bool:
            with contextlib.suppress(paramiko.SSHException, OSError):
                return client.login(PULL_ID, key) == []
            return False

        wait_for(up, 15, "the drop server to let the partner in")
        # Up and idle: each lasting thread (the daemon's, its worker, the kept SFTP session
        # with the push partner) has started and opened what it keeps open.
        next_poll()  # the poll at the start may have come before the file
        wait_for(taken, 15, "the first poll to take its file")
        # SQLite does not close the database descriptor of a connection closed while
        # another connection of this process holds a lock on that file (closing it would
        # drop the other's POSIX locks), and in WAL mode an open connection always does: it
        # keeps the descriptor and hands it to the next connection it opens. So this
        # process holds one ledger.db descriptor per connection at its busiest moment yet
        # (without what follows, the churn ended with 5 of them more than it started with).
        # Holding BURST sessions open at once (a ledger connection each) sets that mark
        # above anything the one-at-a-time churn reaches; past it, any growth is a leak.
        with contextlib.ExitStack() as burst:
            for _ in range(BURST):
                assert burst.enter_context(client.session(PULL_ID, key)) is not None
        wait_for(lambda: not churning(), 15, "the first sessions' threads to end")
        lasting = set(threading.enumerate())
        before, connections, polled = descriptors(), gw.ledger.open_connections(), polls()

        refused = 0
        for n in range(LOGINS):
            if taken():
                next_poll()
            if n % 8 == 3:  # refused: the partner's name with a key that is not its own
                refused += client.login(PULL_ID, wrong) is None
            elif n % 8 == 7:  # refused: a user who is no partner
                refused += client.login("ZZ-NOBODY", key) is None
            else:
                assert client.login(PULL_ID, key) == [], f"login {n} was refused"
        assert refused == LOGINS // 4
        deadline = time.monotonic() + 40
        while polls() - polled < POLLS:
            assert time.monotonic() < deadline, f"only {polls() - polled} polls took a file"
            if taken():
                next_poll()
            time.sleep(0.05)
        wait_for(taken, 15, "the last file to be taken")

        def new_threads() -> list[str]:
            return [t.name for t in threading.enumerate() if t not in lasting]

        wait_for(lambda: not new_threads(), 20, "the churn's threads to end")
        after = descriptors()
        grown = collections.Counter(after.values()) - collections.Counter(before.values())
        assert len(after) <= len(before), f"{len(before)} descriptors, then {len(after)}: {grown}"
        assert gw.ledger.open_connections() == connections
