"""`gateway run` as a service: the real daemon as a subprocess against a real sshd."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    PAYLOAD,
    PAYLOAD_NAME,
    TEST_REGIMES,
    DaemonProcess,
    Desk,
    PartnerPgp,
    Tally,
    Templates,
    actions,
    cli,
    envelope,
    gateway,
    leave,
    manifest,
    partner_pid,
    quarantined,
    remote_files,
    seal,
    set_setting,
    sparse_tar,
    wait_for,
)
from tests.sshd import SshServer


@pytest.fixture
def fast(exchange: tuple[Home, PartnerPgp, SshServer]) -> tuple[Home, PartnerPgp, SshServer]:
    """The exchange with timings short enough for tests."""
    home = exchange[0]
    for name, value in (("daemon.settle_seconds", 1), ("daemon.scan_seconds", 2),
                        ("retry.first_delay_seconds", 1), ("retry.max_delay_seconds", 2),
                        ("daemon.workers", 2)):  # fmt: skip
        set_setting(home, name, value)
    return exchange


@pytest.fixture
def daemon(fast: tuple[Home, PartnerPgp, SshServer]) -> Iterator[DaemonProcess]:
    """A daemon process for the exchange's gateway, killed at the end if still running."""
    process = DaemonProcess(fast[0])
    yield process
    if process.process is not None and process.process.poll() is None:
        process.kill()
    if process.log.exists():
        print(process.log.read_text()[-5000:])  # shown by pytest when the test failed


def delivered(home: Home) -> int:
    with gateway(home) as gw:
        return len(gw.ledger.packages(state="delivered"))


def test_renamed_and_slowly_written_files_are_each_delivered_once(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess
) -> None:
    home, pgp, server = fast
    folder = home.outbound / PARTNER_ID / "conviction"
    daemon.start()
    (folder / "quick.xml.part").write_bytes(b"<quick/>")
    os.rename(folder / "quick.xml.part", folder / "quick.xml")
    slow = b"".join(f"<line n='{n}'/>\n".encode() for n in range(2000))
    with (folder / "slow.xml").open("wb") as f:
        for start in range(0, len(slow), len(slow) // 5):
            f.write(slow[start : start + len(slow) // 5])
            f.flush()
            time.sleep(0.4)  # still growing, for longer than settle_seconds in all

    wait_for(lambda: delivered(home) == 2, what="both packages delivered")

    assert len(remote_files(server)) == 2
    with gateway(home) as gw:
        packages = {p.payload_name: p for p in gw.ledger.packages()}
    plaintext, _ = pgp.decrypt(server.upload / f"{packages['slow.xml'].package_id}.pgp")
    with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
        assert tar.extractfile("payload/slow.xml").read() == slow  # type: ignore[union-attr]
    assert daemon.terminate() == 0


def test_a_burst_is_taken_in_sealed_and_delivered_side_by_side(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess
) -> None:
    """Sealing starts before the last file is taken in, uploads before the last seal."""
    home, _, server = fast
    folder = home.outbound / PARTNER_ID / "conviction"
    staging = home.outbound / PARTNER_ID / ".staging"  # a dot-folder: never taken
    staging.mkdir()
    for n in range(100):
        (staging / f"n{n:03}.xml").write_bytes(b"<n>%d</n>" % n)
    daemon.start()
    for n in range(100):
        os.rename(staging / f"n{n:03}.xml", folder / f"n{n:03}.xml")

    wait_for(lambda: delivered(home) == 100, 120, "100 packages delivered")

    with gateway(home) as gw:
        order = [e.action for e in gw.ledger.events() if e.package_id]
    last = {action: len(order) - 1 - order[::-1].index(action) for action in set(order)}
    assert order.index("seal") < last["intake"], "sealing waited for the whole burst"
    assert order.index("deliver") < last["seal"], "uploads waited for every seal"
    assert len(remote_files(server)) == 100
    assert daemon.terminate() == 0


def test_one_daemon_per_home_and_the_cli_works_beside_it(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess
) -> None:
    home = fast[0]
    daemon.start()

    second = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), "run"],
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip

    assert second.returncode == 13  # HomeLocked
    assert "already working on this home" in second.stderr
    assert cli(home, "status").exit_code == 0
    assert cli(home, "ledger", "list").exit_code == 0
    started = time.monotonic()
    assert daemon.terminate() == 0
    assert time.monotonic() - started < 10
    assert "daemon stopped" in daemon.log.read_text()


def test_sigkill_at_random_moments_loses_nothing_and_sends_nothing_twice(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess
) -> None:
    home, pgp, server = fast
    folder = home.outbound / PARTNER_ID / "request"
    payloads = {f"req-{n:03}.xml": os.urandom(2000 + n) for n in range(100)}
    for name, data in payloads.items():
        (folder / f"{name}.part").write_bytes(data)
        os.rename(folder / f"{name}.part", folder / name)
    rng = random.Random(20261128)

    for _ in range(4):
        daemon.start()
        time.sleep(rng.uniform(0.5, 2.5))
        daemon.kill()
    daemon.start()
    wait_for(lambda: delivered(home) == 100, 180, "all 100 packages delivered")
    assert daemon.terminate() == 0

    names = remote_files(server)
    assert len(names) == 100 and all(n.endswith(".pgp") and not n.startswith(".") for n in names)
    assert not any(folder.iterdir()), "every dropped file was taken"
    with gateway(home) as gw:
        packages = gw.ledger.packages()
        assert gw.ledger.verify_chain()[1] is None
    assert len(packages) == 100
    assert {p.state for p in packages} == {State.DELIVERED}
    assert sorted(f"{p.package_id}.pgp" for p in packages) == names
    assert sorted(p.payload_name or "" for p in packages) == sorted(payloads)
    assert not any(home.work.iterdir()), "no plaintext left"
    for package in rng.sample(packages, 5):
        plaintext, _ = pgp.decrypt(server.upload / f"{package.package_id}.pgp")
        with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
            member = tar.extractfile(f"payload/{package.payload_name}")
            assert member is not None and member.read() == payloads[str(package.payload_name)]


def test_partner_down_for_a_while_gets_everything_once_back(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess
) -> None:
    home, _, server = fast
    server.stop()
    folder = home.outbound / PARTNER_ID / "response"
    for n in range(5):
        (folder / f"r{n}.part").write_bytes(b"response %d" % n)
        os.rename(folder / f"r{n}.part", folder / f"r{n}.xml")
    daemon.start()

    def retried() -> bool:
        with gateway(home) as gw:
            return sum(p.failures for p in gw.ledger.packages()) >= 5

    wait_for(retried, 60, "delivery attempts against the down partner")
    assert remote_files(server) == []
    server.start()
    wait_for(lambda: delivered(home) == 5, 60, "delivery once the partner is back")
    assert len(remote_files(server)) == 5
    assert daemon.terminate() == 0


def test_a_thousand_files_present_before_start_are_all_taken(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess
) -> None:
    home = fast[0]
    folder = home.outbound / PARTNER_ID / "conviction"
    past = time.time() - 60
    for n in range(1000):
        path = folder / f"n{n:04}.xml"
        path.write_bytes(b"%d" % n)
        os.utime(path, (past, past))

    daemon.start()

    def taken() -> bool:
        with gateway(home) as gw:
            return len(gw.ledger.packages()) == 1000

    wait_for(taken, 120, "1000 packages in the ledger")
    assert daemon.terminate() == 0
    assert not any(folder.iterdir())
    with gateway(home) as gw:
        names = sorted(p.payload_name or "" for p in gw.ledger.packages())
    assert names == [f"n{n:04}.xml" for n in range(1000)]


def test_hostile_entries_dropped_while_running_are_quarantined(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess, short_tmp: Path
) -> None:
    home, _, server = fast
    folder = home.outbound / PARTNER_ID / "conviction"
    daemon.start()
    (short_tmp / "secret").write_bytes(b"do not send")
    (folder / "link.xml").symlink_to(short_tmp / "secret")
    os.mkfifo(folder / "fifo.xml")
    (folder / "dir").mkdir()

    wait_for(lambda: len(list(home.quarantine.glob("*.reason.json"))) == 3, 30, "3 quarantined")
    assert daemon.terminate() == 0
    assert remote_files(server) == []
    with gateway(home) as gw:
        assert {p.state for p in gw.ledger.packages()} == {State.REJECTED}


def test_a_dead_watcher_is_restarted_and_the_scan_covers_the_gap(
    fast: tuple[Home, PartnerPgp, SshServer],
) -> None:
    home = fast[0]
    folder = home.outbound / PARTNER_ID / "conviction"
    stop = threading.Event()
    with gateway(home, "daemon") as gw:
        d = gw.daemon(stop)
        thread = threading.Thread(target=d.run)
        thread.start()
        try:
            wait_for(d.watcher.alive, 10, "the watcher")
            d.watcher.stop()  # as if its thread had died
            (folder / "after.part").write_bytes(b"dropped while nobody watched")
            os.rename(folder / "after.part", folder / "after.xml")
            wait_for(lambda: not (folder / "after.xml").exists(), 20, "the file to be taken")
            assert d.watcher.alive()
        finally:
            stop.set()
            thread.join(15)
        assert [p.payload_name for p in gw.ledger.packages()] == ["after.xml"]


#: `gateway ARGV` with a bug that only the package whose id is MARKER meets, in opening it.
BUGGY = """
import sys
from gateway.pipeline import accept
marker, *argv = sys.argv[1:]
unpack = accept.unpack
def breaks_on_the_marked(tar, out, limit):
    if marker in str(tar):
        raise KeyError("a bug met by this file alone")
    return unpack(tar, out, limit)
accept.unpack = breaks_on_the_marked
from gateway.cli import main
main(argv, prog_name="gateway")
"""


def state_or_none(home: Home, pid: str) -> State | None:
    with gateway(home) as gw:
        found = gw.ledger.find(pid)
    return found.state if found else None


def test_poison_files_under_the_daemon_are_quarantined_once_while_every_partner_goes_on(
    fast: tuple[Home, PartnerPgp, SshServer],
    desk: Desk,
    short_tmp: Path,
    templates: Templates,
    tally: Tally,
) -> None:
    """US-NCB leaves a malformed tar and a package that meets a bug, beside a good one;
    AU-AFP, a second partner on its own server, gets its package all the while."""
    home = desk.home
    tally.hostile_input("malformed tar (GNU.sparse.map) under the daemon")
    tally.hostile_input("package meeting an unforeseen error under the daemon")
    other = templates.partner(short_tmp / "au-gnupg", "AU-AFP")
    with SshServer(short_tmp / "au-sshd") as au_server:
        added = cli(home, "partner", "add", "AU-AFP", "--openpgp-key", str(other.public_key),
                    "--fingerprint", other.fingerprint, "--push", au_server.url,
                    "--host-key", au_server.host_key_line, *TEST_REGIMES, "--reason", "second partner")  # fmt: skip
        assert added.exit_code == 0, added.stderr
        au_server.authorize(home.ssh_identity_pub.read_text())
        good, malformed, buggy = partner_pid(), partner_pid(), partner_pid()
        leave(desk, f"{good}.pgp", seal(desk, envelope(manifest(desk, good))))
        leave(desk, f"{malformed}.pgp", seal(desk, sparse_tar()))
        leave(desk, f"{buggy}.pgp", seal(desk, envelope(manifest(desk, buggy))))
        log = home.root / "daemon.log"
        with log.open("ab") as out:
            process = subprocess.Popen([sys.executable, "-c", BUGGY, buggy, "--home", str(home.root), "run"],
                                       stdout=out, stderr=out, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            drop = home.outbound / "AU-AFP" / "conviction"
            (drop / "n.xml.part").write_bytes(b"<n/>")
            os.rename(drop / "n.xml.part", drop / "n.xml")

            wait_for(lambda: all(state_or_none(home, pid) is not None and state_or_none(home, pid)
                                 is not State.FETCHED for pid in (good, malformed, buggy)), 60,
                     "the three packages handled")  # fmt: skip
            wait_for(lambda: len(remote_files(au_server)) == 1, 60, "AU-AFP's package delivered")
            time.sleep(3)  # three more polls: nothing is fetched or handled again
        finally:
            process.terminate()
            assert process.wait(15) == 0
        other.close()

    assert state_or_none(home, good) is State.ACCEPTED
    assert (home.inbound / PARTNER_ID / good / PAYLOAD_NAME).read_bytes() == PAYLOAD
    for pid in (malformed, buggy):
        assert state_or_none(home, pid) is State.REJECTED
        assert actions(home, pid).count("reject") == 1, "handled once, never retried hot"
        assert f"{pid}.receipt" in remote_files(desk.server), "a rejected receipt went back"
    reasons = {report["package_id"]: report["reason"] for report, _ in quarantined(home)}
    assert set(reasons) == {malformed, buggy}
    assert "not a valid uncompressed tar" in reasons[malformed]
    assert "unexpected KeyError" in reasons[buggy]
    assert list(desk.server.download.iterdir()) == [], "every file handled and removed"
    with gateway(home) as gw:
        [sent] = gw.ledger.packages(direction="out")
    assert sent.partner == "AU-AFP" and sent.state is State.DELIVERED
    assert remote_files(au_server) == [f"{sent.package_id}.pgp"]
    assert log.read_text().count("Traceback") <= 2, "no traceback storm"
    tally.packages_checked(2, lost=0, duplicated=0)  # the good one and AU-AFP's, checked above


def test_the_daemon_takes_a_sidecar_with_its_file_and_quarantines_a_bad_pair(
    fast: tuple[Home, PartnerPgp, SshServer], daemon: DaemonProcess
) -> None:
    """The producer renames the sidecar into place first, then the file: one package,
    whose manifest carries what the sidecar said; a bad sidecar takes its file with it."""
    home, pgp, server = fast
    folder = home.outbound / PARTNER_ID / "conviction"
    daemon.start()
    for name, data in (("good.xml.meta.json", b'{"reference": "CASE-77", "regime": "CoE-1959-Art22"}'),
                       ("good.xml", b"<good/>"), ("bad.xml.meta.json", b'{"reference": 7}'),
                       ("bad.xml", b"<bad/>")):  # fmt: skip
        (folder / f"{name}.part").write_bytes(data)
        os.rename(folder / f"{name}.part", folder / name)

    wait_for(lambda: delivered(home) == 1, what="the good package delivered")
    wait_for(lambda: len(list(home.quarantine.glob("*.reason.json"))) == 2, 30, "the bad pair")
    assert daemon.terminate() == 0
    assert sorted(os.listdir(folder)) == []
    with gateway(home) as gw:
        [good] = gw.ledger.packages(state="delivered")
        [bad] = gw.ledger.packages(state="rejected")
    assert (good.reference, good.legal_basis) == ("CASE-77", "CoE-1959-Art22")
    assert bad.last_error == "bad.xml.meta.json: sidecar field 'reference' must be a string"
    plaintext, _ = pgp.decrypt(server.upload / f"{good.package_id}.pgp")
    with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
        sent = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert (sent["reference"], sent["legal_basis"]) == ("CASE-77", "CoE-1959-Art22")
