"""`gateway run` as systemd runs it: the notify protocol and SIGHUP, on a real subprocess.

A Unix datagram socket bound by the test stands in for systemd's notify socket; the
daemon finds it in $NOTIFY_SOCKET as it would under `Type=notify`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.errors import AgentUnavailable
from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    DaemonProcess,
    ManualClock,
    PartnerPgp,
    cli,
    gateway,
    processes_under,
    quarantined,
    send,
    set_setting,
    wait_for,
)
from tests.sshd import SshServer

#: `gateway run` with one fault injected: while the file named first exists, the main
#: loop hangs (as if stuck in a system call), touching `frozen` beside it to say so.
FROZEN_LOOP = """
import sys, time
from pathlib import Path
from gateway.pipeline import daemon
freeze = Path(sys.argv.pop(1))
original = daemon.Daemon.recheck_unsettled
def recheck(self):
    while freeze.exists():
        (freeze.parent / "frozen").touch()
        time.sleep(0.05)
    original(self)
daemon.Daemon.recheck_unsettled = recheck
from gateway.cli import main
main()
"""


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[socket.socket]:
    """systemd's side of the notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(short_tmp / "notify"))
    yield sock
    sock.close()


def notice(sock: socket.socket, seconds: float = 30) -> list[str]:
    """The next datagram's lines."""
    sock.settimeout(seconds)
    return sock.recv(4096).decode().split("\n")


def next_with(sock: socket.socket, line: str, seconds: float = 30) -> list[str]:
    """Read notices until one has `line`."""
    while line not in (lines := notice(sock, seconds)):
        pass
    return lines


def test_ready_then_watchdog_pings_that_stop_while_the_loop_is_stuck_then_stopping(
    home: Home, short_tmp: Path, notify: socket.socket
) -> None:
    freeze, log = short_tmp / "freeze", short_tmp / "daemon.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(short_tmp / "notify"), "WATCHDOG_USEC": "1000000"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", FROZEN_LOOP, str(freeze), "--home", str(home.root), "run"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    try:
        first = notice(notify)
        assert first[0] == "READY=1", first
        assert first[1] == (
            "STATUS=serving: 0 steps in hand, 0 files settling; "
            "0 queued, 0 in flight, 0 overdue, 0 held, 0 failed"
        )
        assert "daemon started" in log.read_text()  # READY comes after start-up, not before
        for _ in range(3):
            next_with(notify, "WATCHDOG=1", 5)  # every 0.5 s: half of WATCHDOG_USEC

        freeze.touch()
        wait_for((short_tmp / "frozen").exists, 10, "the main loop to hang")
        notify.setblocking(False)
        try:  # what was sent before the hang
            while notify.recv(4096):
                pass
        except BlockingIOError:
            pass
        with pytest.raises(TimeoutError):
            notice(notify, 3)  # six intervals without a ping: systemd would restart us

        freeze.unlink()
        next_with(notify, "WATCHDOG=1", 10)  # turning again: fed again
        process.send_signal(signal.SIGTERM)
        assert next_with(notify, "STOPPING=1", 10)[1].startswith("STATUS=stopping")
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        print(log.read_text()[-3000:])
    assert "daemon stopped" in log.read_text()


@pytest.fixture
def fast(exchange: tuple[Home, PartnerPgp, SshServer]) -> tuple[Home, PartnerPgp, SshServer]:
    """The exchange with timings short enough for tests."""
    for name, value in (("daemon.settle_seconds", 1), ("daemon.scan_seconds", 2),
                        ("retry.first_delay_seconds", 1), ("retry.max_delay_seconds", 2)):  # fmt: skip
        set_setting(exchange[0], name, value)
    return exchange


def test_sighup_applies_live_settings_names_the_rest_and_survives_a_bad_file(
    fast: tuple[Home, PartnerPgp, SshServer],
) -> None:
    home, _, server = fast
    folder = home.outbound / PARTNER_ID / "conviction"
    daemon = DaemonProcess(home).start()
    assert daemon.process is not None
    try:
        set_setting(home, "daemon.max_package_bytes", 100)
        set_setting(home, "serve.max_connections", 5)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: daemon.max_package_bytes is now 100" in daemon.log.read_text(),
                 20, "the reload")  # fmt: skip
        assert (
            "reload: serve.max_connections changed to 5 in gateway.toml, but takes effect only "
            "at a restart (systemctl restart gateway); keeping 20"
        ) in daemon.log.read_text()

        (folder / "big.xml").write_bytes(b"x" * 150)  # over the new limit: quarantined
        wait_for(lambda: len(quarantined(home)) == 1, 30, "the big file quarantined")

        good = home.settings.read_text()
        home.settings.write_text(good + "\n[daemon]\nworkers = 2\n")  # a table twice: no TOML
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the settings in force" in daemon.log.read_text(), 20, "reload")
        assert f"reload: {home.settings} is not valid TOML" in daemon.log.read_text()

        (folder / "big2.xml").write_bytes(b"x" * 150)  # the limit of 100 is still in force
        (folder / "small.xml").write_bytes(b"<small/>")
        wait_for(lambda: len(quarantined(home)) == 2, 30, "the second big file quarantined")
        home.settings.write_text(good)  # for this test's own look at the ledger
        with gateway(home) as gw:
            wait_for(lambda: [p.state for p in gw.ledger.packages(state="delivered")] ==
                     [State.DELIVERED], 30, "the small file delivered")  # fmt: skip
        assert daemon.process.poll() is None  # SIGHUP no longer ends the daemon
        assert daemon.terminate() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        print(daemon.log.read_text()[-5000:])
    assert len(os.listdir(server.upload)) == 1


def agents(home: Home) -> set[int]:
    """The gpg-agents running on the home's keyring."""
    return {pid for pid in processes_under(home.gnupg)
            if b"gpg-agent" in Path(f"/proc/{pid}/cmdline").read_bytes()}  # fmt: skip


def test_the_daemon_owns_the_one_agent_and_commands_beside_it_never_start_another(
    home: Home,
) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home.gnupg), "--launch", "gpg-agent"], check=True)
    stray = agents(home)  # as left by a command run while no daemon ran
    assert len(stray) == 1
    daemon = DaemonProcess(home).start()
    try:
        wait_for(lambda: len(agents(home)) == 1 and agents(home) != stray, 20, "the daemon's agent")
        own = agents(home)

        signed = cli(home, "audit", "checkpoint")  # signs, through the daemon's agent
        assert signed.exit_code == 0, signed.stderr
        assert agents(home) == own

        subprocess.run(["gpgconf", "--homedir", str(home.gnupg), "--kill", "gpg-agent"], check=True)
        wait_for(lambda: not agents(home), 10, "the agent to stop")
        refused = cli(home, "audit", "checkpoint")
        assert refused.exit_code == AgentUnavailable.exit_code
        assert refused.stderr.startswith(f"error: no gpg-agent answers for {home.gnupg}, and")
        assert not agents(home)  # the command started none
        assert daemon.terminate() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()
    assert not agents(home)


def test_the_status_line_counts_the_ledger_every_fifteen_seconds(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, clock: ManualClock
) -> None:
    home = exchange[0]
    (short_tmp / "a.xml").write_bytes(b"<a/>")
    send(home, short_tmp / "a.xml", clock=clock)
    with gateway(home, "daemon", clock) as gw:
        daemon = gw.daemon(threading.Event())
        counts = "; {} queued, 0 in flight, 0 overdue, 0 held, 0 failed"
        assert daemon.status() == "serving: 0 steps in hand, 0 files settling" + counts.format(1)

        send(home, short_tmp / "a.xml", clock=clock)
        clock.advance(14)
        assert daemon.status().endswith(counts.format(1))  # one query per 15 s, not per turn
        clock.advance(1)
        assert daemon.status().endswith(counts.format(2))
