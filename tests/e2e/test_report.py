"""`gateway report`, checked against ledgers built by real traffic between two gateways.

GB-ACRO pushes to US-NCB's drop server (real SFTP on loopback, real gpg, real ledgers),
US-NCB knows GB-ACRO as a pull partner, and GB-ACRO also has a partner that never
answers. Each side's work runs in-process on one clock that the test moves, so every
count and every time to receipt is known exactly.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    HOST_KEY,
    TEST_REGIMES,
    ManualClock,
    Templates,
    cli,
    gateway,
    package,
    run_once,
    set_setting,
)

#: The day of the traffic: tomorrow, at noon, so that the test's 1,000 seconds stay in one
#: day and one month, and after every key's creation.
NOON = (datetime.now(UTC).date() + timedelta(days=1)).isoformat() + "T12:00:00+00:00"
DAY, MONTH = NOON[:10], NOON[:7]
BEFORE = (datetime.now(UTC).date()).isoformat()  # the day before DAY


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(home: Home, tmp: Path, to: str, kind: str, size: int, clock: ManualClock) -> str:
    path = tmp / f"{kind}-{size}.xml"
    path.write_bytes(b"<x>" + b"f" * (size - 8) + b"</x>\n")
    done = cli(home, "send", str(path), "--to", to, "--kind", kind, clock=clock)
    assert done.exit_code == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def traffic(
    short_tmp: Path, templates: Templates, clock: ManualClock
) -> Iterator[tuple[Home, Home, dict[str, str]]]:
    """Both ledgers after the traffic; the package ids by name."""
    clock.set(datetime.fromisoformat(NOON).timestamp())
    acro = templates.home("GB-ACRO", short_tmp / "acro")
    ncb = templates.home("US-NCB", short_tmp / "ncb")
    fr = templates.partner(short_tmp / "fr", "FR-CJN")
    keys = {}
    for home in (acro, ncb):
        keys[home] = home.root / "key.asc"
        keys[home].write_text(cli(home, "keys", "export", "--openpgp").stdout)
        with gateway(home) as gw:
            keys[home.root.name] = gw.own_key
    added = cli(ncb, "partner", "add", "GB-ACRO", "--openpgp-key", str(keys[acro]),
                "--fingerprint", keys["acro"], "--pull", "--ssh-key", str(acro.ssh_identity_pub),
                *TEST_REGIMES, "--reason", "bilateral test")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    with gateway(ncb, "daemon", clock) as serving:
        server = serving.drop_server("127.0.0.1:0")
        server.start()
        try:
            for args in (
                ("US-NCB", "--openpgp-key", str(keys[ncb]), "--fingerprint", keys["ncb"],
                 "--push", f"sftp://GB-ACRO@127.0.0.1:{server.port}", "--host-key",
                 ncb.host_key_pub.read_text()),
                ("FR-CJN", "--openpgp-key", str(fr.public_key), "--fingerprint", fr.fingerprint,
                 "--push", f"sftp://gbacro@127.0.0.1:{closed_port()}", "--host-key", HOST_KEY),
            ):  # fmt: skip
                done = cli(acro, "partner", "add", *args, *TEST_REGIMES, "--reason", "test partner")
                assert done.exit_code == 0, done.stderr
            yield acro, ncb, exchange(acro, ncb, short_tmp, clock)
        finally:
            server.stop()
            fr.close()


def exchange(acro: Home, ncb: Home, tmp: Path, clock: ManualClock) -> dict[str, str]:
    """The traffic; each package's fate is in its name."""
    ids = {}
    # US-NCB answers twice; the second answer is larger than GB-ACRO will take.
    ids["answer_accepted"] = send(ncb, tmp, "GB-ACRO", "response", 100, clock)
    ids["answer_rejected"] = send(ncb, tmp, "GB-ACRO", "response", 5000, clock)
    run_once(ncb, clock)
    set_setting(ncb, "daemon.max_package_bytes", 2000)
    set_setting(acro, "daemon.max_package_bytes", 4000)
    set_setting(acro, "retry.give_up_after_seconds", 600)

    ids["notice_300s"] = send(acro, tmp, "US-NCB", "conviction", 100, clock)
    ids["cancelled"] = send(acro, tmp, "US-NCB", "conviction", 100, clock)
    assert (
        cli(acro, "cancel", ids["cancelled"], "--reason", "wrong file", clock=clock).exit_code == 0
    )
    ids["failed"] = send(acro, tmp, "FR-CJN", "extradition", 100, clock)
    run_once(acro, clock)  # T0: the notice delivered; both answers fetched, one rejected
    clock.advance(200)
    ids["notice_100s"] = send(acro, tmp, "US-NCB", "conviction", 100, clock)
    run_once(acro, clock)  # T0+200
    clock.advance(50)
    ids["request_refused_50s"] = send(acro, tmp, "US-NCB", "request", 3000, clock)
    run_once(acro, clock)  # T0+250
    clock.advance(50)
    run_once(ncb, clock)  # T0+300: accepts both notices, rejects the request as too large
    run_once(acro, clock)  # ... and GB-ACRO records the three receipts
    clock.advance(700)
    run_once(acro, clock)  # FR-CJN never answered: past retry.give_up_after_seconds
    run_once(ncb, clock)
    return ids


def test_report_counts_the_traffic_both_gateways_saw(
    traffic: tuple[Home, Home, dict[str, str]],
) -> None:
    acro, ncb, ids = traffic
    fates = {name: package(acro if name != "answer_accepted" and name != "answer_rejected" else ncb, pid).state
             for name, pid in ids.items()}  # fmt: skip
    assert fates == {
        "answer_accepted": State.ACKNOWLEDGED, "answer_rejected": State.REFUSED,
        "notice_300s": State.ACKNOWLEDGED, "cancelled": State.CANCELLED, "failed": State.FAILED,
        "notice_100s": State.ACKNOWLEDGED, "request_refused_50s": State.REFUSED,
    }  # fmt: skip
    assert package(acro, ids["answer_accepted"]).state is State.ACCEPTED
    assert package(acro, ids["answer_rejected"]).state is State.REJECTED

    done = cli(acro, "report", "--from", DAY, "--to", DAY, "--by", "partner", "--json")
    assert done.exit_code == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {k: doc[k] for k in ("from", "to", "by", "gateway")} == {
        "from": DAY, "to": DAY, "by": ["partner"], "gateway": "GB-ACRO"}  # fmt: skip
    zero = dict.fromkeys(("sent", "acknowledged", "refused", "failed", "cancelled", "received",
                          "accepted", "rejected", "notified_in_time", "answered_in_time",
                          "late_now"), 0)  # fmt: skip
    assert doc["rows"] == [
        {"partner": "FR-CJN", **zero, "failed": 1,
         "median_seconds_to_receipt": None, "p95_seconds_to_receipt": None},
        {"partner": "US-NCB", **zero, "sent": 3, "acknowledged": 2, "refused": 1, "cancelled": 1,
         "received": 2, "accepted": 1, "rejected": 1, "notified_in_time": 2,
         "median_seconds_to_receipt": 100.0, "p95_seconds_to_receipt": 300.0},
        {"partner": "all", **zero, "sent": 3, "acknowledged": 2, "refused": 1, "failed": 1,
         "cancelled": 1, "received": 2, "accepted": 1, "rejected": 1, "notified_in_time": 2,
         "median_seconds_to_receipt": 100.0, "p95_seconds_to_receipt": 300.0},
    ]  # fmt: skip

    csv = cli(acro, "report", "--from", DAY, "--to", DAY, "--by", "kind,month", "--csv")
    assert csv.exit_code == 0, csv.stderr
    assert csv.stdout.splitlines() == [
        "kind,month,sent,acknowledged,refused,failed,cancelled,received,accepted,rejected,"
        "notified_in_time,answered_in_time,late_now,"
        "median_seconds_to_receipt,p95_seconds_to_receipt",
        # A package rejected before its manifest could be trusted has no kind in the ledger.
        f"(unknown),{MONTH},0,0,0,0,0,1,0,1,0,0,0,,",
        f"conviction,{MONTH},2,2,0,0,1,0,0,0,2,0,0,200.0,300.0",
        f"extradition,{MONTH},0,0,0,1,0,0,0,0,0,0,0,,",
        f"request,{MONTH},1,0,1,0,0,0,0,0,0,0,0,50.0,50.0",
        f"response,{MONTH},0,0,0,0,0,1,1,0,0,0,0,,",
        "all,all,3,2,1,1,1,2,1,1,2,0,0,100.0,300.0",
    ]

    # The s.62 record of an inbound package names the partner it came from and its key.
    record = json.loads(cli(acro, "audit", "show", ids["answer_accepted"], "--json").stdout)
    with gateway(ncb) as gw:
        ncb_key = gw.own_key
    assert (record["who"], record["sender"]) == ("US-NCB", {"partner": "US-NCB", "key": ncb_key})
    assert record["disclosures"] == [] and record["what"]["kind"] == "response"
    assert [e["action"] for e in record["events"]] == ["fetch", "accept", "receipt.sent"]
    assert record["legal_basis"] == "MOU-TEMPLATE" and record["duty"] is None
    # ... and that of a notification, the duty it started and the delivery that met it.
    notice = json.loads(cli(acro, "audit", "show", ids["notice_300s"], "--json").stdout)
    assert notice["duty"] is not None
    assert (notice["duty"]["duty"], notice["duty"]["met_at"]) == (
        "notify", package(acro, ids["notice_300s"]).delivered_at)  # fmt: skip

    theirs = json.loads(cli(ncb, "report", "--from", DAY, "--to", DAY, "--json").stdout)
    [total] = theirs["rows"]
    assert {k: total[k] for k in ("acknowledged", "refused", "failed", "cancelled",
                                  "received", "accepted", "rejected")} == {
        "acknowledged": 1, "refused": 1, "failed": 0, "cancelled": 0,
        "received": 3, "accepted": 2, "rejected": 1}  # fmt: skip

    text = cli(acro, "report", "--from", DAY, "--to", DAY)
    assert text.exit_code == 0
    lines = text.stdout.splitlines()
    assert lines[0] == f"GB-ACRO: packages taken in from {DAY} to {DAY} (UTC)"
    assert lines[1].split() == ["sent", "acknowledged", "refused", "failed", "cancelled", "received",
                                "accepted", "rejected", "notified", "in", "time", "answered", "in",
                                "time", "late", "now", "median", "s", "to", "receipt", "p95", "s",
                                "to", "receipt"]  # fmt: skip
    assert lines[2].split() == [
        "3",
        "2",
        "1",
        "1",
        "1",
        "2",
        "1",
        "1",
        "2",
        "0",
        "0",
        "100.0",
        "300.0",
    ]


def test_a_notification_left_undelivered_is_late_after_its_period(
    traffic: tuple[Home, Home, dict[str, str]], clock: ManualClock
) -> None:
    # The extradition notice to FR-CJN failed; 28 days on (MOU-TEMPLATE), its duty is late.
    acro = traffic[0]
    clock.advance(29 * 86400)
    done = cli(acro, "report", "--from", DAY, "--to", DAY, "--by", "regime", "--json", clock=clock)
    assert done.exit_code == 0, done.stderr
    rows = {r["regime"]: r for r in json.loads(done.stdout)["rows"]}
    # The answer rejected before its manifest could be trusted has no legal basis.
    assert sorted(rows) == ["(none)", "MOU-TEMPLATE", "all"]
    assert rows["(none)"]["received"] == rows["(none)"]["rejected"] == 1
    assert {k: rows["MOU-TEMPLATE"][k] for k in ("notified_in_time", "late_now", "failed")} == {
        "notified_in_time": 2, "late_now": 1, "failed": 1}  # fmt: skip
    assert rows["all"]["late_now"] == 1


def test_a_period_with_no_traffic_and_wrong_periods(
    traffic: tuple[Home, Home, dict[str, str]],
) -> None:
    acro = traffic[0]
    empty = json.loads(cli(acro, "report", "--from", "2026-01-01", "--to", BEFORE, "--json").stdout)
    assert empty["rows"][0]["sent"] == 0 and empty["rows"][0]["received"] == 0
    backwards = cli(acro, "report", "--from", "2026-11-19", "--to", "2026-11-18")
    assert backwards.exit_code == 2
    assert backwards.stderr == "error: --to 2026-11-18 is before --from 2026-11-19\n"
    bad = cli(acro, "report", "--from", "18/11/2026", "--to", "2026-11-18")
    assert bad.exit_code == 2
    assert (
        bad.stderr
        == "error: --from 18/11/2026 --to 2026-11-18: write each as a day, e.g. 2026-11-01\n"
    )
    by = cli(acro, "report", "--from", DAY, "--to", DAY, "--by", "partner,country")
    assert by.exit_code == 2
    assert (
        by.stderr
        == "error: --by partner,country: give each of partner, kind, month, regime at most once, comma-separated\n"
    )
