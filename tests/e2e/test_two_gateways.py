"""Two gateways, each a real `gateway run` process, exchanging with no other software.

GB-ACRO pushes to US-NCB's drop server; US-NCB knows GB-ACRO as a pull partner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import TEST_REGIMES, Templates, cli, gateway, set_setting, wait_for
from tests.sshd import free_port


def state_of(home: Home, pid: str) -> State | None:
    with gateway(home) as gw:
        found = [p for p in gw.ledger.packages() if p.package_id == pid]
    return found[0].state if found else None


@pytest.fixture
def pair(short_tmp: Path, templates: Templates) -> Iterator[tuple[Home, Home]]:
    """GB-ACRO and US-NCB, each running as a daemon; US-NCB serves GB-ACRO."""
    acro = templates.home("GB-ACRO", short_tmp / "acro")
    ncb = templates.home("US-NCB", short_tmp / "ncb")
    for home in (acro, ncb):
        for name, value in (
            ("daemon.settle_seconds", 1),
            ("daemon.poll_seconds", 1),
            ("daemon.scan_seconds", 2),
        ):
            set_setting(home, name, value)
        (home.root / "key.asc").write_text(cli(home, "keys", "export", "--openpgp").stdout)
    port = free_port()
    set_setting(ncb, "serve.listen", f"127.0.0.1:{port}")

    def fingerprint(home: Home) -> str:
        with gateway(home) as gw:
            return gw.own_key

    added = cli(ncb, "partner", "add", "GB-ACRO", "--openpgp-key", str(acro.root / "key.asc"),
                "--fingerprint", fingerprint(acro), "--pull", "--ssh-key", str(acro.ssh_identity_pub),
                *TEST_REGIMES, "--reason", "bilateral test")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    added = cli(acro, "partner", "add", "US-NCB", "--openpgp-key", str(ncb.root / "key.asc"),
                "--fingerprint", fingerprint(ncb), "--push", f"sftp://GB-ACRO@127.0.0.1:{port}",
                "--host-key", ncb.host_key_pub.read_text(), *TEST_REGIMES, "--reason", "bilateral test")  # fmt: skip
    assert added.exit_code == 0, added.stderr

    processes = []
    for home in (ncb, acro):
        with (home.root / "daemon.log").open("ab") as log:
            processes.append(subprocess.Popen([sys.executable, "-m", "gateway", "--home", str(home.root), "run"],
                                              stdout=log, stderr=log, stdin=subprocess.DEVNULL))  # fmt: skip
    try:
        yield acro, ncb
    finally:
        for process in processes:
            process.terminate()
        codes = [process.wait(20) for process in processes]
        for home in (acro, ncb):
            print(home.root.name, (home.root / "daemon.log").read_text()[-3000:])
        assert codes == [0, 0]


def test_a_notice_and_a_response_each_acknowledged(pair: tuple[Home, Home]) -> None:
    acro, ncb = pair
    notice = b"<conviction><person>FICTIONAL, Test</person></conviction>\n"
    drop = acro.outbound / "US-NCB" / "conviction"
    (drop / "notice.xml.part").write_bytes(notice)
    os.rename(drop / "notice.xml.part", drop / "notice.xml")

    def sent() -> list[str]:
        with gateway(acro) as gw:
            return [p.package_id for p in gw.ledger.packages(direction="out")]

    wait_for(lambda: len(sent()) == 1, 30, "GB-ACRO to take the notice in")
    [notice_id] = sent()
    wait_for(
        lambda: state_of(acro, notice_id) is State.ACKNOWLEDGED, 60, "the notice to be acknowledged"
    )
    assert state_of(ncb, notice_id) is State.ACCEPTED
    assert (ncb.inbound / "GB-ACRO" / notice_id / "notice.xml").read_bytes() == notice

    answer = ncb.root / "answer.xml"
    answer.write_bytes(b"<response>no record</response>\n")
    result = cli(
        ncb, "send", str(answer), "--to", "GB-ACRO", "--kind", "response", "--ref", notice_id
    )
    assert result.exit_code == 0, result.stderr
    response_id = result.stdout.strip()

    wait_for(
        lambda: state_of(ncb, response_id) is State.ACKNOWLEDGED,
        60,
        "the response to be acknowledged",
    )
    assert state_of(acro, response_id) is State.ACCEPTED
    assert (
        acro.inbound / "US-NCB" / response_id / "answer.xml"
    ).read_bytes() == answer.read_bytes()
    with gateway(ncb) as gw:
        events = [e.action for e in gw.ledger.events(response_id)]
    # The erasure is committed with `sealed`; the attempt is recorded before the copy.
    assert events[:5] == ["intake", "seal", "erase", "deliver.attempt", "publish"]
    assert "deliver" in events and events[-1] == "receipt"

    # Each side's report counts what it saw: one sent and acknowledged, one received and accepted.
    today = datetime.now(UTC).date()
    days = [str(today - timedelta(days=1)), str(today + timedelta(days=1))]
    # GB-ACRO's notice started a duty to notify (MOU-TEMPLATE), met by its delivery.
    for home, sent_id, notified in ((acro, notice_id, 1), (ncb, response_id, 0)):
        done = cli(home, "report", "--from", days[0], "--to", days[1], "--json")
        assert done.exit_code == 0, done.stderr
        [total] = json.loads(done.stdout)["rows"]
        with gateway(home) as gw:
            delivered = str(gw.ledger.package(sent_id).delivered_at)
            [receipt] = [e.at for e in gw.ledger.events(sent_id) if e.action == "receipt"]
        waited = round(
            (datetime.fromisoformat(receipt) - datetime.fromisoformat(delivered)).total_seconds(), 3
        )
        assert total == {"sent": 1, "acknowledged": 1, "refused": 0, "failed": 0, "cancelled": 0,
                         "received": 1, "accepted": 1, "rejected": 0, "notified_in_time": notified,
                         "answered_in_time": 0, "late_now": 0,
                         "median_seconds_to_receipt": waited, "p95_seconds_to_receipt": waited}  # fmt: skip
