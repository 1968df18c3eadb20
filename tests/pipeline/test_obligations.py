"""The gateway's obligations, end to end on a real home: legal basis, routing, sidecars
and deadlines, with time moved by a ManualClock (nothing sleeps).

Dates are real ones of the England and Wales calendar, as the `holidays` library has it:
Friday 2027-05-28 comes before the spring bank holiday, Monday 2027-05-31.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gateway.adapters.calendar import working_days
from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from gateway.core.regimes import add_working_days
from tests.helpers import (
    PARTNER_ID,
    Desk,
    ManualClock,
    PartnerPgp,
    cli,
    envelope,
    events,
    gateway,
    leave,
    manifest,
    package,
    partner_add,
    partner_pid,
    quarantined,
    run_once,
    seal,
    send,
    state,
)


def at(text: str) -> float:
    """A UTC time, e.g. '2027-05-28T09:00', as a timestamp."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.fixture
def office(home: Home, partner_pgp: PartnerPgp) -> Home:
    """The gateway with US-NCB registered (its server never reached): packages stay queued."""
    code, err = partner_add(home, partner_pgp.public_key, partner_pgp.fingerprint)
    assert code == 0, err
    return home


class Recorder(logging.Handler):
    """Keeps the records the gateway's logger emits."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def source(tmp: Path, name: str = "notice.xml") -> Path:
    path = tmp / name
    path.write_bytes(b"<conviction>fictional</conviction>\n")
    return path


# -- the calendar ------------------------------------------------------------------------


def test_the_england_and_wales_calendar_knows_the_spring_bank_holiday() -> None:
    is_working = working_days("GB-ENG")
    assert not is_working(date(2027, 5, 31)), "spring bank holiday"
    assert is_working(date(2027, 5, 28)) and is_working(date(2027, 6, 1))
    # 20 working days from Friday 28 May: June 1-4, 7-11, 14-18, 21-25 are 19; the 20th is
    # Monday 28 June. Without the bank holiday it would have been Friday 25 June.
    assert add_working_days(date(2027, 5, 28), 20, is_working) == date(2027, 6, 28)
    assert add_working_days(date(2027, 5, 28), 20, lambda d: d.weekday() < 5) == date(2027, 6, 25)


# -- legal basis and routing --------------------------------------------------------------


def test_a_kind_with_no_regime_for_the_partner_is_refused_saying_what_to_register(
    office: Home, short_tmp: Path
) -> None:
    assert cli(office, "partner", "set", PARTNER_ID, "--regime", "conviction=EUFRA-2020-s1",
               "--reason", "TCA").exit_code == 0  # fmt: skip

    refused = cli(office, "send", str(source(short_tmp)), "--to", PARTNER_ID, "--kind", "request")

    assert refused.exit_code == 44
    assert refused.stderr == (
        f"error: {PARTNER_ID} is registered to receive no request under any regime: register "
        f"one with `gateway partner set {PARTNER_ID} --regime request=REGIME --reason R` "
        "(`gateway regimes` lists them)\n"
    )
    named = cli(office, "send", str(source(short_tmp)), "--to", PARTNER_ID, "--kind",
                "conviction", "--legal-basis", "CoE-1959-Art22")  # fmt: skip
    assert (
        named.exit_code == 44
        and "under CoE-1959-Art22 (it may under EUFRA-2020-s1)" in named.stderr
    )
    with gateway(office) as gw:
        assert gw.ledger.packages() == [], "nothing was queued"
        assert list(gw.home.work.iterdir()) == []


def test_the_regime_goes_in_the_ledger_and_the_intake_event(office: Home, short_tmp: Path) -> None:
    pid = send(office, source(short_tmp))  # the partner's first regime for convictions

    assert package(office, pid).legal_basis == "MOU-TEMPLATE"
    [intake] = [e for e in events(office, pid) if e.action == "intake"]
    assert json.loads(str(intake.detail))["legal_basis"] == "MOU-TEMPLATE"


def test_a_misrouted_package_is_refused_and_a_channel_lets_it_through(
    office: Home, short_tmp: Path
) -> None:
    refused = cli(office, "send", str(source(short_tmp)), "--to", PARTNER_ID, "--kind",
                  "conviction", "--nationality", "FR", "--nationality", "IE")  # fmt: skip

    assert refused.exit_code == 45
    assert refused.stderr == (
        "error: the package concerns a national of FR, IE, and US-NCB serves US: send it to a "
        "partner of that country, or, if US-NCB is a channel for it, "
        "`gateway partner set US-NCB --channel-for CC --reason R`\n"
    )
    assert send(office, source(short_tmp), "--nationality", "US", "--nationality", "FR")
    set_ = cli(office, "partner", "set", PARTNER_ID, "--channel-for", "IE", "--reason", "NCB")
    assert set_.exit_code == 0, set_.stderr
    pid = send(office, source(short_tmp), "--nationality", "IE")
    with gateway(office) as gw:
        terms = gw.duties.obligations.terms(pid)
        assert terms is not None and terms.nationalities == ("IE",)
        assert [e.action for e in gw.ledger.events() if e.action == "partner.policy"] == [
            "partner.policy",
            "partner.policy",
        ], "add with --regime, then set: both audited"


# -- clocks -------------------------------------------------------------------------------


def checked(home: Home, clock: ManualClock) -> dict[str, tuple[str, float]]:
    """`gateway check`'s verdict and figure for the duties."""
    found = json.loads(cli(home, "check", "--json", clock=clock).stdout)["conditions"]
    return {c["name"]: (c["status"], c["value"]) for c in found if c["name"].startswith("duties_")}


def test_a_notification_goes_late_at_day_28_and_is_shown_late(
    office: Home, short_tmp: Path
) -> None:
    clock = ManualClock(at("2027-05-03T10:00"))
    ok = cli(office, "partner", "set", PARTNER_ID, "--regime", "EUFRA-2020-s1", "--reason", "TCA")
    assert ok.exit_code == 0, ok.stderr
    pid = send(office, source(short_tmp), "--recorded-on", "2027-05-03", clock=clock)

    # The period of 28 days beginning with the day of recording ends with 30 May (day 27).
    clock.set(at("2027-05-30T12:00"))
    assert cli(office, "ledger", "list", "--late", clock=clock).stdout == "no packages\n"
    soon = cli(office, "ledger", "list", "--due-within", "1d", clock=clock).stdout
    assert soon.startswith(pid)
    row = json.loads(cli(office, "status", "--json", clock=clock).stdout)["partners"][0]
    assert (row["due_soon"], row["late"], row["met_on_time"]) == (1, 0, 0)
    assert checked(office, clock) == {"duties_due_soon": ("WARNING", 1), "duties_late": ("OK", 0)}

    clock.set(at("2027-05-31T00:00"))  # day 28 after recording: late
    assert cli(office, "ledger", "list", "--late", clock=clock).stdout.startswith(pid)
    status = json.loads(cli(office, "status", "--json", clock=clock).stdout)
    assert (status["partners"][0]["due_soon"], status["partners"][0]["late"]) == (0, 1)
    assert (
        f"notify {pid} ({PARTNER_ID}, EUFRA-2020-s1) is late: it was due by "
        "2027-05-30T23:59:59.999Z" in status["warnings"]
    )
    shown = json.loads(cli(office, "ledger", "show", pid, "--json", clock=clock).stdout)
    assert (shown["duty"]["duty"], shown["duty"]["state"]) == ("notify", "late")
    assert checked(office, clock) == {"duties_due_soon": ("OK", 0), "duties_late": ("CRITICAL", 1)}
    assert cli(office, "check", clock=clock).exit_code == 2

    logged = Recorder()
    logging.getLogger("gateway").addHandler(logged)
    try:
        with gateway(office, "daemon", clock) as gw:
            gw.duties.warn()
            gw.duties.warn()
    finally:
        logging.getLogger("gateway").removeHandler(logged)
    assert [(r.levelname, r.getMessage()) for r in logged.records] == [
        ("WARNING", f"{pid}: notification to {PARTNER_ID} under EUFRA-2020-s1 is late: it was due by "
         "2027-05-30T23:59:59.999Z")
    ], "said once"  # fmt: skip


def test_the_log_warns_before_expiry_once(office: Home, short_tmp: Path) -> None:
    clock = ManualClock(at("2027-05-03T10:00"))
    pid = send(office, source(short_tmp), "--recorded-on", "2027-05-03", clock=clock)
    with gateway(office, "daemon", clock) as gw:
        assert gw.duties.warn() == []
        clock.set(at("2027-05-28T00:00"))  # within duties.warn_days (3) of 30 May
        assert gw.duties.warn() == [
            f"{pid}: notification to {PARTNER_ID} under MOU-TEMPLATE is due by 2027-05-30T23:59:59.999Z"
        ]
        assert gw.duties.warn() == []


def test_a_request_received_before_a_bank_holiday_is_due_on_its_20th_working_day_and_a_response_closes_it(
    desk: Desk,
) -> None:
    clock = ManualClock(at("2027-05-28T09:00"))  # a Friday; Monday 31 May is a bank holiday
    ok = cli(
        desk.home, "partner", "set", PARTNER_ID, "--regime", "EUFRA-2020-s5", "--reason", "TCA"
    )
    assert ok.exit_code == 0, ok.stderr
    request = partner_pid()
    doc = manifest(desk, request, kind="request", legal_basis="EUFRA-2020-s5")
    leave(desk, f"{request}.pgp", seal(desk, envelope(doc)))

    run_once(desk.home, clock)

    assert state(desk.home, request) is State.ACCEPTED
    shown = json.loads(cli(desk.home, "ledger", "show", request, "--json", clock=clock).stdout)
    assert shown["duty"]["duty"] == "answer"
    assert shown["duty"]["due_at"] == "2027-06-28T23:59:59.999Z", "the 20th working day"
    assert shown["duty"]["state"] == "open"

    clock.set(at("2027-06-24T09:00"))
    listed = cli(desk.home, "ledger", "list", "--due-within", "7d", clock=clock).stdout
    assert listed.startswith(request)
    answer = desk.tmp / "answer.xml"
    answer.write_bytes(b"<response>none</response>\n")
    response = send(desk.home, answer, "--kind", "response", "--in-reply-to", request, clock=clock)
    run_once(desk.home, clock)

    assert state(desk.home, response) is State.DELIVERED
    shown = json.loads(cli(desk.home, "ledger", "show", request, "--json", clock=clock).stdout)
    assert (shown["duty"]["state"], shown["duty"]["met_by"]) == ("met", response)
    row = json.loads(cli(desk.home, "status", "--json", clock=clock).stdout)["partners"][0]
    assert (row["due_soon"], row["late"], row["met_on_time"]) == (0, 0, 1)
    # The disclosure event names the recipient and the legal basis.
    [deliver] = [e for e in events(desk.home, response) if e.action == "deliver"]
    detail = json.loads(str(deliver.detail))
    assert (detail["recipient"], detail["legal_basis"]) == (PARTNER_ID, "EUFRA-2020-s5")
    # The manifest the partner opens carries the regime and its use restrictions.
    plain, _ = desk.pgp.decrypt(desk.server.upload / f"{response}.pgp")
    with tarfile.open(fileobj=io.BytesIO(plain)) as opened:
        sent = json.loads(opened.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert sent["legal_basis"] == "EUFRA-2020-s5" and sent["in_reply_to"] == request
    assert sent["use_restrictions"] == [
        "Use only for the purpose for which it was requested (EUFRA 2020 s.4(4))"
    ]


def test_an_amendment_is_shown_with_what_it_amends(office: Home, short_tmp: Path) -> None:
    first = send(office, source(short_tmp))
    second = send(office, source(short_tmp), "--supersedes", first)

    one = json.loads(cli(office, "ledger", "show", first, "--json").stdout)
    two = json.loads(cli(office, "ledger", "show", second, "--json").stdout)

    assert [p["package_id"] for p in one["superseded_by"]] == [second]
    assert [p["package_id"] for p in two["supersedes"]] == [first]
    assert f"superseded_by      {second}" in cli(office, "ledger", "show", first).stdout


# -- sidecars -----------------------------------------------------------------------------


def drop(home: Home, name: str, data: bytes, kind: str = "conviction") -> Path:
    path = home.outbound / PARTNER_ID / kind / name
    path.write_bytes(data)
    return path


def test_a_sidecar_is_taken_with_its_file(office: Home, clock: ManualClock) -> None:
    meta = {"reference": "CASE-9", "regime": "CoE-1959-Art22", "recorded_on": "2026-11-30",
            "nationalities": ["US"], "marking": "OFFICIAL-SENSITIVE"}  # fmt: skip
    sidecar = drop(office, "x.xml.meta.json", json.dumps(meta).encode())
    payload = drop(office, "x.xml", b"<conviction/>\n")
    clock.advance(10)

    with gateway(office, "daemon", clock) as gw:
        assert gw.steps.take_in() == 0
        [taken] = gw.ledger.packages()
        terms = gw.duties.obligations.terms(taken.package_id)

    assert not payload.exists() and not sidecar.exists(), "both taken"
    assert (taken.state, taken.payload_name, taken.reference) == (State.RECEIVED, "x.xml", "CASE-9")
    assert (taken.legal_basis, taken.marking) == ("CoE-1959-Art22", "OFFICIAL-SENSITIVE")
    assert terms is not None and terms.nationalities == ("US",)
    assert terms.recorded_on == "2026-11-30"


def test_a_file_waits_for_its_sidecar_to_settle(office: Home, clock: ManualClock) -> None:
    payload = drop(office, "x.xml", b"<conviction/>\n")
    sidecar = drop(office, "x.xml.meta.json", b'{"reference": "CASE-9"}')
    os.utime(payload, (clock.now() - 60, clock.now() - 60))
    os.utime(sidecar, (clock.now(), clock.now()))

    with gateway(office, "daemon", clock) as gw:
        assert gw.steps.take_in() == 2, "the file and its sidecar wait together"
        assert gw.ledger.packages() == []
        clock.advance(5)
        gw.steps.take_in()
        assert [p.reference for p in gw.ledger.packages()] == ["CASE-9"]


@pytest.mark.parametrize(
    ("sidecar", "reason"),
    [
        (b"{not json", "x.xml.meta.json: the sidecar is not UTF-8 JSON"),
        (b'{"nationality": "FR"}', "x.xml.meta.json: the sidecar has unknown fields ['nationality']"),
        (b'{"recorded_on": "30/11/2026"}', "x.xml.meta.json: the sidecar: the recording date '30/11/2026' is not a date: use YYYY-MM-DD"),
        (b'{"nationalities": ["fr"]}', "x.xml.meta.json: the sidecar: 'fr' is not a country"),
    ],
)  # fmt: skip
def test_a_bad_sidecar_is_quarantined_with_its_file(
    office: Home, clock: ManualClock, sidecar: bytes, reason: str
) -> None:
    drop(office, "x.xml.meta.json", sidecar)
    drop(office, "x.xml", b"<conviction/>\n")
    clock.advance(10)

    with gateway(office, "daemon", clock) as gw:
        gw.steps.take_in()
        [rejected] = gw.ledger.packages()

    assert rejected.state is State.REJECTED and str(rejected.last_error).startswith(reason)
    kept = {report["original_name"]: data for report, data in quarantined(office)}
    assert kept == {"x.xml": b"<conviction/>\n", "x.xml.meta.json": sidecar}
    assert (office.quarantine / f"{rejected.package_id}.meta.json").read_bytes() == sidecar
    assert list((office.outbound / PARTNER_ID / "conviction").iterdir()) == []


def test_a_sidecar_naming_a_regime_the_partner_lacks_is_quarantined_with_its_file(
    office: Home, clock: ManualClock
) -> None:
    drop(office, "x.xml.meta.json", b'{"regime": "EUFRA-2020-s1", "reference": "R"}')
    drop(office, "x.xml", b"<conviction/>\n")
    clock.advance(10)

    with gateway(office, "daemon", clock) as gw:
        gw.steps.take_in()
        [rejected] = gw.ledger.packages()

    assert rejected.state is State.REJECTED
    assert "not registered to receive conviction under EUFRA-2020-s1" in str(rejected.last_error)
    kept = json.loads((office.quarantine / f"{rejected.package_id}.meta.json").read_bytes())
    assert kept == {"legal_basis": "EUFRA-2020-s1", "reference": "R"}, "what it declared, kept"


def test_a_lone_sidecar_waits_then_is_quarantined(office: Home, clock: ManualClock) -> None:
    sidecar = drop(office, "late.xml.meta.json", b'{"reference": "CASE-9"}')
    clock.advance(10)

    with gateway(office, "daemon", clock) as gw:
        gw.steps.take_in()
        assert gw.ledger.packages() == [] and sidecar.exists(), "it may come before its file"
        clock.advance(3600)
        gw.steps.take_in()
        [rejected] = gw.ledger.packages()

    assert not sidecar.exists() and rejected.state is State.REJECTED
    assert "a sidecar with no file beside it" in str(rejected.last_error)


# -- the home's own regimes ---------------------------------------------------------------


def test_an_own_regime_in_the_home_is_listed_and_usable(office: Home, short_tmp: Path) -> None:
    office.regimes.write_text(
        '[[regime]]\nid = "MOU-XX-2026"\ntitle = "MoU with XX"\ncitation = "MoU para. 7"\n'
        'kinds = ["conviction"]\nbatch_every_months = 3\n'
    )
    listed = json.loads(cli(office, "regimes", "--json").stdout)
    assert [r["id"] for r in listed][-1] == "MOU-XX-2026"
    assert listed[-1]["source"] == str(office.regimes)
    ok = cli(office, "partner", "set", PARTNER_ID, "--regime", "MOU-XX-2026", "--reason", "MoU")
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout == f"{PARTNER_ID}: conviction: MOU-XX-2026; serves US\n"
    assert package(office, send(office, source(short_tmp))).legal_basis == "MOU-XX-2026"


def test_a_bad_own_regimes_file_stops_the_command_naming_the_entry(office: Home) -> None:
    office.regimes.write_text('[[regime]]\nid = "X"\ntitle = "t"\ncitation = "c"\nkinds = []\n')

    refused = cli(office, "regimes")

    assert refused.exit_code == 17
    assert refused.stderr == (
        f"error: {office.regimes}: regime 1 (X): `kinds` must list some of conviction, "
        "extradition, request, response\n"
    )


def test_an_unknown_regime_is_refused_by_partner_set(office: Home) -> None:
    refused = cli(office, "partner", "set", PARTNER_ID, "--regime", "request=CoE-1959-Art22",
                  "--reason", "x")  # fmt: skip
    assert refused.exit_code == 2
    assert refused.stderr == (
        "error: --regime request=CoE-1959-Art22: CoE-1959-Art22 covers conviction, not request\n"
    )


def test_a_batch_regime_warns_when_its_next_batch_comes_due(office: Home, short_tmp: Path) -> None:
    """CoE 1959 Art. 22: at least once a year, counted from the last one delivered (here
    none, so from the registration of the policy)."""
    clock = ManualClock(at("2027-01-10T09:00"))
    ok = cli(office, "partner", "set", PARTNER_ID, "--regime", "CoE-1959-Art22", "--reason", "CoE",
             clock=clock)  # fmt: skip
    assert ok.exit_code == 0, ok.stderr
    line = (f"CoE-1959-Art22 notifications to {PARTNER_ID}: next batch due by "
            "2028-01-10T23:59:59.999Z (last sent never)")  # fmt: skip

    clock.set(at("2028-01-06T09:00"))
    assert line not in json.loads(cli(office, "status", "--json", clock=clock).stdout)["warnings"]
    clock.set(at("2028-01-08T09:00"))  # within duties.warn_days
    assert line in json.loads(cli(office, "status", "--json", clock=clock).stdout)["warnings"]


def test_a_crash_after_the_file_was_moved_in_keeps_its_sidecar_content(
    office: Home, clock: ManualClock
) -> None:
    """Crash between moving the file in and removing its sidecar: the next start records
    the package with what the sidecar said, and removes the sidecar (still the same)."""
    sidecar = drop(office, "x.xml.meta.json", b'{"reference": "CASE-5", "nationalities": ["US"]}')
    payload = drop(office, "x.xml", b"<conviction/>\n")
    pid = "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"
    folder = office.work / pid
    folder.mkdir(mode=0o700)
    (folder / "origin.json").write_text(json.dumps({
        "partner": PARTNER_ID, "kind": "conviction", "name": "x.xml", "sidecar": sidecar.name,
        "declared": {"reference": "CASE-5", "nationalities": ["US"]}}))  # fmt: skip
    os.rename(payload, folder / "payload")

    with gateway(office, "daemon", clock) as gw:
        [recovered] = gw.steps.intake.recover()
        terms = gw.duties.obligations.terms(pid)

    assert (recovered.package_id, recovered.state, recovered.reference) == (
        pid,
        State.RECEIVED,
        "CASE-5",
    )
    assert terms is not None and terms.nationalities == ("US",)
    assert not sidecar.exists(), "taken with its file"


@pytest.mark.parametrize(
    ("kind", "sidecar", "reason"),
    [
        ("request", None, f"{PARTNER_ID} is registered to receive no request under any regime"),
        ("conviction", b'{"nationalities": ["FR"]}',
         f"the package concerns a national of FR, and {PARTNER_ID} serves US"),
    ],
)  # fmt: skip
def test_a_spooled_file_without_a_basis_or_misrouted_is_quarantined_with_the_reason(
    office: Home, clock: ManualClock, kind: str, sidecar: bytes | None, reason: str
) -> None:
    ok = cli(office, "partner", "set", PARTNER_ID, "--regime", "conviction=MOU-TEMPLATE",
             "--reason", "convictions only")  # fmt: skip
    assert ok.exit_code == 0, ok.stderr
    if sidecar is not None:
        drop(office, "x.xml.meta.json", sidecar, kind)
    drop(office, "x.xml", b"<x/>\n", kind)
    clock.advance(10)

    with gateway(office, "daemon", clock) as gw:
        gw.steps.take_in()
        [rejected] = gw.ledger.packages()

    assert rejected.state is State.REJECTED and str(rejected.last_error).startswith(reason)
    [(report, kept)] = [(r, d) for r, d in quarantined(office) if r["original_name"] == "x.xml"]
    assert report["reason"] == rejected.last_error and kept == b"<x/>\n"
