"""Metrics after real traffic: packages delivered to a real sshd, acknowledged by the
partner's signed receipt, a bad package rejected; read over HTTP and from the textfile."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.adapters import logs
from gateway.adapters.home import Home
from gateway.adapters.metrics import loopback
from gateway.core.errors import SettingsInvalid
from gateway.pipeline.metrics import Publisher
from tests.helpers import (
    PARTNER_ID,
    DaemonProcess,
    Desk,
    ManualClock,
    cli,
    gateway,
    leave,
    partner_pid,
    receipt_json,
    remote_files,
    run_once,
    send,
    set_setting,
    sha256,
    sign,
    wait_for,
)
from tests.sshd import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def traffic(desk: Desk, clock: ManualClock) -> tuple[str, str, float]:
    """One package delivered 120 s after intake and acknowledged 3,720 s after it, a bad
    package from the partner rejected, a checkpoint, then one package queued for 600 s."""
    home = desk.home
    (desk.tmp / "a.xml").write_bytes(b"<conviction>fictional</conviction>\n")
    pid = send(home, desk.tmp / "a.xml", clock=clock)
    clock.advance(120)
    run_once(home, clock)
    digest = sha256((desk.server.upload / f"{pid}.pgp").read_bytes())
    leave(desk, f"{pid}.receipt", sign(desk.pgp, receipt_json(pid, digest)))
    leave(desk, f"{partner_pid()}.pgp", b"not a package")
    clock.advance(3600)
    run_once(home, clock)
    contact = clock.now()
    with gateway(home, "daemon", clock) as gw:
        gw.audit.checkpoint()
    clock.advance(30)
    (desk.tmp / "b.xml").write_bytes(b"<conviction>waiting</conviction>\n")
    queued = send(home, desk.tmp / "b.xml", clock=clock)
    clock.advance(600)
    return pid, queued, contact


def check(found: Samples, own_expires: float, contact: float) -> None:
    out = {"partner": PARTNER_ID}
    assert value(found, "gateway_packages", **out, state="acknowledged") == 1
    assert value(found, "gateway_packages", **out, state="received") == 1
    assert value(found, "gateway_packages", partner=PARTNER_ID, state="rejected") == 1
    assert value(found, "gateway_deliveries_total", partner=PARTNER_ID) == 1
    assert value(found, "gateway_inbound_total", partner=PARTNER_ID, outcome="rejected") == 1
    assert value(found, "gateway_to_delivered_seconds_bucket", partner=PARTNER_ID, le="60.0") == 0
    assert value(found, "gateway_to_delivered_seconds_bucket", partner=PARTNER_ID, le="300.0") == 1
    assert value(found, "gateway_to_delivered_seconds_count", partner=PARTNER_ID) == 1
    assert value(found, "gateway_to_delivered_seconds_sum", partner=PARTNER_ID) == pytest.approx(
        120, abs=0.01
    )
    assert (
        value(found, "gateway_to_acknowledged_seconds_bucket", partner=PARTNER_ID, le="900.0") == 0
    )
    assert (
        value(found, "gateway_to_acknowledged_seconds_bucket", partner=PARTNER_ID, le="14400.0")
        == 1
    )
    assert value(found, "gateway_to_acknowledged_seconds_sum", partner=PARTNER_ID) == pytest.approx(
        3720, abs=0.01
    )
    assert value(found, "gateway_backlog_oldest_age_seconds", partner=PARTNER_ID) == pytest.approx(
        600, abs=0.01
    )
    assert value(found, "gateway_audit_checkpoint_age_seconds") == pytest.approx(630, abs=0.01)
    assert value(found, "gateway_quarantined") == 1
    assert value(found, "gateway_partner_up", partner=PARTNER_ID) == 1
    assert (
        value(found, "gateway_partner_last_contact_timestamp_seconds", partner=PARTNER_ID)
        == contact
    )
    [own] = [v for (name, labels), v in found.items()
             if name == "gateway_key_expiry_timestamp_seconds" and ("owner", "gateway") in labels]  # fmt: skip
    assert own == own_expires
    assert not [k for k in found if k[0] == "gateway_packages_overdue"]


def test_metrics_over_http_and_in_the_textfile_after_real_traffic(
    desk: Desk, clock: ManualClock
) -> None:
    _, _, contact = traffic(desk, clock)
    textfile = desk.tmp / "collector" / "gateway.prom"
    textfile.parent.mkdir()
    with gateway(desk.home, "daemon", clock) as gw:
        info = gw.own_key_info
        own_expires = float(min(t for t in (info.expires, info.encryption_expires) if t))
        exporter = gw.metrics()
        exporter.serve(*loopback("127.0.0.1:0"))
        try:
            check(samples(scrape(exporter.port)), own_expires, contact)
        finally:
            exporter.stop()
        exporter.write(textfile)
    check(samples(textfile.read_text()), own_expires, contact)
    assert os.listdir(textfile.parent) == ["gateway.prom"], "no temporary file left beside it"


def test_counters_read_only_new_events_and_a_restart_finds_the_same(
    desk: Desk, clock: ManualClock
) -> None:
    traffic(desk, clock)
    with gateway(desk.home, "daemon", clock) as gw:
        running = gw.metrics()
        first = samples(running.text().decode())
        run_once(desk.home, clock)  # the queued package goes now, 600 s after its intake
        later = samples(running.text().decode())
    with gateway(desk.home, "daemon", clock) as gw:
        restarted = samples(gw.metrics().text().decode())
    assert value(first, "gateway_deliveries_total", partner=PARTNER_ID) == 1
    for found in (later, restarted):
        assert value(found, "gateway_deliveries_total", partner=PARTNER_ID) == 2
        assert value(found, "gateway_to_delivered_seconds_count", partner=PARTNER_ID) == 2
        assert value(
            found, "gateway_to_delivered_seconds_sum", partner=PARTNER_ID
        ) == pytest.approx(720, abs=0.01)
        assert (
            value(found, "gateway_to_delivered_seconds_bucket", partner=PARTNER_ID, le="300.0") == 1
        )
        assert (
            value(found, "gateway_to_delivered_seconds_bucket", partner=PARTNER_ID, le="900.0") == 2
        )
    assert later == restarted


def test_the_metrics_command_prints_or_writes_the_same(desk: Desk, clock: ManualClock) -> None:
    _, _, contact = traffic(desk, clock)
    with gateway(desk.home, clock=clock) as gw:
        info = gw.own_key_info
    own_expires = float(min(t for t in (info.expires, info.encryption_expires) if t))
    printed = cli(desk.home, "metrics", clock=clock)
    assert printed.exit_code == 0, printed.stderr
    check(samples(printed.stdout), own_expires, contact)
    textfile = desk.tmp / "gateway.prom"
    assert cli(desk.home, "metrics", "--textfile", str(textfile), clock=clock).exit_code == 0
    check(samples(textfile.read_text()), own_expires, contact)


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:9817", "192.0.2.1:9817", "[::]:9817", "example.org:9817", "9817"]
)
def test_metrics_are_served_on_loopback_only(listen: str) -> None:
    with pytest.raises(SettingsInvalid, match=r"metrics\.listen"):
        loopback(listen)
    assert loopback("[::1]:9817") == ("::1", 9817)
    assert loopback("localhost:9817") == ("127.0.0.1", 9817)


def test_the_daemon_serves_and_writes_its_metrics(desk: Desk, short_tmp: Path) -> None:
    home = desk.home
    port, textfile = free_port(), short_tmp / "gateway.prom"
    set_setting(home, "metrics.listen", f"127.0.0.1:{port}")
    set_setting(home, "metrics.textfile", str(textfile))
    set_setting(home, "metrics.textfile_seconds", 1)
    daemon = DaemonProcess(home).start()
    try:
        for n in range(3):
            (home.outbound / PARTNER_ID / "conviction" / f"n{n}.xml").write_bytes(b"<n/>")
        wait_for(lambda: len(remote_files(desk.server)) == 3, 60, "three deliveries")

        def counted(text: str) -> bool:
            found = samples(text)
            return (
                found.get(("gateway_deliveries_total", frozenset({("partner", PARTNER_ID)}))) == 3
            )

        wait_for(lambda: counted(scrape(port)), 30, "the endpoint to count three deliveries")
        wait_for(
            lambda: textfile.exists() and counted(textfile.read_text()), 30, "the textfile too"
        )
        found = samples(scrape(port))
        assert value(found, "gateway_packages", partner=PARTNER_ID, state="delivered") == 3
        assert value(found, "gateway_partner_up", partner=PARTNER_ID) == 1
        assert value(found, "gateway_to_delivered_seconds_count", partner=PARTNER_ID) == 3
    finally:
        assert daemon.terminate() == 0


def test_a_textfile_that_cannot_be_written_is_logged_once_until_it_can(
    home: Home, clock: ManualClock, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.setup(debug=False, log_format="text")
    folder = short_tmp / "collector"
    set_setting(home, "metrics.textfile", str(folder / "gateway.prom"))
    with gateway(home, "daemon", clock) as gw:
        publisher = Publisher(gw.metrics(), gw.settings, clock)
        capsys.readouterr()
        for _ in range(4):  # four turns, each past metrics.textfile_seconds
            publisher.tick()
            clock.advance(15)
        folder.mkdir()
        publisher.tick()
        publisher.tick()  # not due yet: nothing more
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 3)[2:] for line in lines] == [
        ["WARNING", f"cannot write metrics.textfile {folder}/gateway.prom (No such file or directory): "
                    "check the folder exists and the gateway's user may write it; trying again"],
        ["INFO", f"metrics.textfile {folder}/gateway.prom written again"],
    ]  # fmt: skip
    assert "gateway_packages" in (folder / "gateway.prom").read_text()
