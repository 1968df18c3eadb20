"""The home's work lock (gateway/adapters/lock.py): one `gateway run` per home."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from gateway.adapters.lock import exclusive, held, holder
from gateway.core.errors import HomeLocked


def test_a_start_that_meets_a_status_probe_still_takes_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`held` and `holder` (`check`, `status`) hold the lock shared for an instant; a
    `gateway run` starting in that instant must not take it for another run."""
    path = tmp_path / "gateway.lock"
    real, probes = fcntl.flock, list[int]()

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX | fcntl.LOCK_NB and not probes:
            probe = os.open(path, os.O_RDONLY)  # a probe looks at this very instant...
            real(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            probes.append(probe)
            try:
                return real(fd, operation)
            finally:
                os.close(probe)  # ...and lets go
        return real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    with exclusive(path):
        monkeypatch.setattr(fcntl, "flock", real)
        assert probes, "the start met the probe"
        assert holder(path) == os.getpid()
        assert held(path)
    assert not held(path)


def test_a_start_beside_a_running_gateway_is_refused_with_its_pid(tmp_path: Path) -> None:
    path = tmp_path / "gateway.lock"
    path.write_text("4242\n")
    running = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(HomeLocked, match=r"pid 4242"), exclusive(path):
            pass
    finally:
        os.close(running)
    with exclusive(path):
        assert holder(path) == os.getpid()
