"""The systemd notifier, against a real Unix datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.systemd import Notifier
from tests.helpers import ManualClock


@pytest.fixture
def listener(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a path, as systemd's notify socket is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(short_tmp / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_ready_stopping_and_status_reach_the_socket(
    listener: tuple[socket.socket, str], clock: ManualClock
) -> None:
    sock, path = listener
    notifier = Notifier(path, None, clock)

    notifier.ready("serving: 0 steps in hand")
    assert received(sock) == ["READY=1", "STATUS=serving: 0 steps in hand"]
    notifier.alive("serving: 0 steps in hand")  # nothing new, no watchdog asked for
    assert nothing_waiting(sock)
    notifier.alive("serving: 2 steps in hand")
    assert received(sock) == ["STATUS=serving: 2 steps in hand"]
    notifier.reloading()
    lines = received(sock)
    assert (
        lines[0] == "RELOADING=1" and lines[1] == f"MONOTONIC_USEC={int(clock.monotonic() * 1e6)}"
    )
    notifier.stopping()
    assert received(sock)[0] == "STOPPING=1"


def test_an_abstract_socket_is_written_with_an_at_sign(clock: ManualClock) -> None:
    name = f"gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier(f"@{name}", None, clock).ready("up")
        assert received(sock) == ["READY=1", "STATUS=up"]


def test_the_watchdog_is_fed_at_half_its_interval(
    listener: tuple[socket.socket, str], clock: ManualClock
) -> None:
    sock, path = listener
    notifier = Notifier(path, 10_000_000, clock)  # systemd waits 10 s: ping every 5 s

    notifier.alive("s")
    assert received(sock) == ["STATUS=s", "WATCHDOG=1"]
    clock.advance(4.9)
    notifier.alive("s")
    assert nothing_waiting(sock)
    clock.advance(0.1)
    notifier.alive("s")
    assert received(sock) == ["WATCHDOG=1"]


def test_the_environment_is_read_once_and_cleared_for_child_processes(
    listener: tuple[socket.socket, str], clock: ManualClock
) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}

    notifier = Notifier.from_environment(clock, env)

    assert env == {}
    assert notifier.watchdog_seconds == 2.0
    notifier.alive("s")
    assert received(sock) == ["STATUS=s", "WATCHDOG=1"]


def test_a_watchdog_meant_for_another_process_is_not_fed(clock: ManualClock) -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_environment(clock, env).watchdog_seconds is None


def test_outside_systemd_nothing_is_sent(clock: ManualClock) -> None:
    notifier = Notifier.from_environment(clock, {})
    assert notifier.address is None and notifier.watchdog_seconds is None
    notifier.ready("up")  # does nothing, raises nothing
    notifier.alive("up")


def test_a_socket_gone_is_logged_once_and_not_raised(
    short_tmp: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(short_tmp / "gone"), 2_000_000, clock)

    notifier.ready("up")
    notifier.alive("up")

    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith(f"cannot notify systemd at {short_tmp}")
