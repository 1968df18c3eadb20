"""Shared fixtures: short temporary homes copied from templates, a partner played by plain
gpg, a clock the test moves, leak guards. Everything else tests share is in tests.helpers."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from tests.helpers import (
    FORGER_ID,
    GATEWAY_ID,
    Desk,
    ManualClock,
    PartnerPgp,
    Tally,
    Templates,
    add_partner,
    cli,
    gateway,
    processes_under,
    stop_agents,
)
from tests.sshd import SshServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The full torture run takes minutes: it runs only when asked for with `-m torture`."""
    if "torture" in str(config.getoption("markexpr") or ""):
        return
    wait = pytest.mark.skip(
        reason="the full torture run: pytest -m torture, or scripts/faults --torture"
    )
    for item in items:
        if item.get_closest_marker("torture"):
            item.add_marker(wait)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (an SFTP transport, a gpg reader...)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (extra := [t for t in threading.enumerate() if t not in before and t.is_alive()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert not extra, f"threads left running: {[t.name for t in extra]}"


@pytest.fixture
def tally(record_property: Callable[[str, object], None]) -> Iterator[Tally]:
    """The test's `Tally`, recorded as the `tally` property (JSON) when the test ends:
    scripts/faults reads it from the JUnit report."""
    record = Tally()
    yield record
    record_property("tally", json.dumps(dataclasses.asdict(record)))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary folder with a short path (gpg-agent's socket path must stay < 108 bytes).

    Fails the test if any process started below it (a gpg-agent, an sshd) outlives it.
    """
    path = Path(tempfile.mkdtemp(prefix="gw", dir="/tmp"))
    yield path
    stop_agents(path)
    deadline = time.monotonic() + 3  # a killed agent takes a moment to exit
    while (leaked := processes_under(path)) and time.monotonic() < deadline:
        time.sleep(0.01)
    described = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                 for pid in leaked if Path(f"/proc/{pid}").exists()]  # fmt: skip
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    assert not leaked, f"processes left running under {path}: {described}"


@pytest.fixture(scope="session")
def templates() -> Iterator[Templates]:
    """Homes and partner keyrings made once for the session (in a short folder too)."""
    made = Templates(Path(tempfile.mkdtemp(prefix="gwt", dir="/tmp")))
    yield made
    made.close()


@pytest.fixture
def partner_pgp(short_tmp: Path, templates: Templates) -> Iterator[PartnerPgp]:
    """The partner's own gpg keyring, in the test's folder."""
    pgp = templates.partner(short_tmp / "partner-gnupg")
    yield pgp
    pgp.close()


@pytest.fixture
def home(short_tmp: Path, templates: Templates) -> Home:
    """A freshly initialised gateway home (a copy of the session's template)."""
    return templates.home(GATEWAY_ID, short_tmp / "gw")


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves, from the real time now: keys gpg makes now are valid on it."""
    return ManualClock(time.time())


@pytest.fixture
def server(short_tmp: Path) -> Iterator[SshServer]:
    """The partner's SFTP server: a real sshd on loopback."""
    with SshServer(short_tmp / "sshd") as server:
        yield server


@pytest.fixture
def exchange(
    home: Home, partner_pgp: PartnerPgp, server: SshServer
) -> tuple[Home, PartnerPgp, SshServer]:
    """A gateway with the partner registered as a push partner."""
    add_partner(home, partner_pgp, server)
    return home, partner_pgp, server


@pytest.fixture
def desk(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, templates: Templates
) -> Iterator[Desk]:
    """The exchange, with the gateway key imported and lsigned by the partner and the forger."""
    home, pgp, server = exchange
    with gateway(home) as gw:
        fpr = gw.own_key
    armored = cli(home, "keys", "export", "--openpgp").stdout
    forger = templates.partner(short_tmp / "forger-gnupg", FORGER_ID)
    try:
        for keyring in (pgp, forger):
            keyring.trust_gateway(armored)
            keyring.gpg("--quick-lsign-key", fpr)
        yield Desk(home, pgp, forger, server, fpr, short_tmp)
    finally:
        forger.close()
