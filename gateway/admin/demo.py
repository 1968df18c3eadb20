"""`gateway demo`: a complete exchange between two fictional authorities on this machine.

XA-RECORDS (a records office) pushes to the drop server of XB-AGENCY (a partner agency),
which knows the office as a pull partner: the same set-up as two real gateways, with
real GnuPG keys, a real SFTP server on a free loopback port and real SQLite ledgers.
XA and XB are ISO 3166 user-assigned codes: no real country. All data is invented.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final, TextIO

from gateway.adapters.clock import SystemClock
from gateway.adapters.home import Home
from gateway.admin import keys, partners
from gateway.app.gateway import Gateway
from gateway.core.clock import Clock
from gateway.core.duties import Declared
from gateway.core.errors import GatewayError
from gateway.core.lifecycle import FINAL, State
from gateway.core.model import Package
from gateway.core.names import KINDS
from gateway.pipeline.intake import Intake

OFFICE: Final = "XA-RECORDS"
AGENCY: Final = "XB-AGENCY"
DEADLINE_SECONDS: Final = 60
_NOTICES: Final = {
    "conviction": ("notice-of-conviction.xml",
                   "<conviction><person>EXAMPLE, Fictional</person><offence>0301</offence></conviction>\n"),
    "extradition": ("notice-of-surrender.xml",
                    "<extradition><person>SAMPLE, Invented</person><surrender>2026-11-28</surrender></extradition>\n"),
    "request": ("request.xml", "<request><person>SPECIMEN, Made-Up</person><purpose>criminal proceedings</purpose></request>\n"),
}  # fmt: skip
#: The regime both sides register for each other: the shipped template memorandum.
REGIME: Final = "MOU-TEMPLATE"
_RESPONSE: Final = ("response.xml", "<response><code>RRT-00-00</code><convictions/></response>\n")


@contextlib.contextmanager
def _place(keep: bool) -> Iterator[Path]:
    """A short temporary folder (gpg-agent sockets need short paths), removed unless kept."""
    root = Path(tempfile.mkdtemp(prefix="gateway-demo-", dir="/tmp"))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _setup(root: Path, clock: Clock) -> tuple[Gateway, Gateway]:
    office, agency = (
        keys.init(Home(root / name), name, "demo", clock) for name in (OFFICE, AGENCY)
    )
    for name, gw in ((OFFICE, office), (AGENCY, agency)):
        (root / f"{name}.asc").write_text(gw.keyring.export_public(gw.own_key))
    partners.add_pull(agency, OFFICE, root / f"{OFFICE}.asc", office.own_key,
                      office.home.ssh_identity_pub, "demo: keys exchanged by hand")  # fmt: skip
    agency.duties.obligations.set_policy(
        OFFICE, [(k, REGIME) for k in KINDS], None, "demo memorandum"
    )
    return office, agency


def run(keep: bool, out: TextIO) -> bool:
    """Run the demo; print an account to `out`; say whether every package was acknowledged."""
    clock = SystemClock()
    started = clock.monotonic()
    with _place(keep) as root:
        office, agency = _setup(root, clock)
        server = agency.drop_server("127.0.0.1:0")
        server.start()
        try:
            partners.add_push(office, AGENCY, root / f"{AGENCY}.asc", agency.own_key, f"sftp://{OFFICE}@127.0.0.1:{server.port}",
                              agency.home.host_key_pub.read_text(), "demo: host key read from `keys show`")  # fmt: skip
            office.duties.obligations.set_policy(AGENCY, [(k, REGIME) for k in KINDS], None,
                                                 "demo memorandum")  # fmt: skip
            out.write(f"Exchange gateway demo in {root}\n"
                      f"  {OFFICE:<11} records office, pushes to the partner's drop server\n"
                      f"  {AGENCY:<11} partner agency, drop server on 127.0.0.1:{server.port}\n\n")  # fmt: skip
            sent = [_send(office, root, AGENCY, kind, *_NOTICES[kind]) for kind in _NOTICES]
            sent.append(_send(agency, root, OFFICE, "response", *_RESPONSE, reference=sent[-1]))
            done = _exchange(office, agency, sent)
            _account(out, office, agency, sent)
        finally:
            server.stop()
            for gw in (office, agency):
                gw.keyring.stop_agent()
                gw.close()
        elapsed = clock.monotonic() - started
        if keep:
            out.write(f"\nKept in {root}. Look around, for example:\n"
                      f"  gateway --home {root / OFFICE} ledger list\n"
                      f"  gateway --home {root / OFFICE} ledger show {sent[0]}\n"
                      f"  gateway --home {root / AGENCY} status\n"
                      f"  gateway --home {root / AGENCY} audit verify\n"
                      f"  ls -R {root / AGENCY / 'spool' / 'inbound'}\n")  # fmt: skip
        else:
            out.write("\nCleaned up: nothing left running, the temporary folder removed.\n")
    out.write(f"{'Every package acknowledged' if done else 'NOT every package was acknowledged'} "
              f"in {elapsed:.1f} s.\n")  # fmt: skip
    return done


def _send(
    gw: Gateway, root: Path, to: str, kind: str, name: str, text: str, reference: str | None = None
) -> str:
    path = root / name
    path.write_text(text)
    return (
        Intake(gw.home, gw.ledger, gw.settings, gw.duties)
        .copy_in(path, to, kind, Declared(marking="OFFICIAL", in_reply_to=reference))
        .package_id
    )


def _exchange(office: Gateway, agency: Gateway, sent: list[str]) -> bool:
    """Let both gateways work, turn about, until every package is final (or time runs out)."""
    clock = office.clock
    deadline = clock.monotonic() + DEADLINE_SECONDS
    while clock.monotonic() < deadline:
        for gw in (office, agency):
            gw.run_once()
        states = [_owner(office, agency, pid).ledger.package(pid).state for pid in sent]
        if all(s in FINAL for s in states):
            return all(s is State.ACKNOWLEDGED for s in states)
        clock.sleep(0.1)
    return False


def _owner(office: Gateway, agency: Gateway, pid: str) -> Gateway:
    return office if pid.startswith(OFFICE) else agency


def _account(out: TextIO, office: Gateway, agency: Gateway, sent: list[str]) -> None:
    for pid in sent:
        sender = _owner(office, agency, pid)
        receiver = agency if sender is office else office
        package: Package = sender.ledger.package(pid)
        out.write(f"{pid}  {package.kind:<11} {package.payload_name}\n"
                  f"  {sender.settings.gateway_id} -> {receiver.settings.gateway_id}: {package.state}\n")  # fmt: skip
        steps = [(e.at[11:23], e.state) for e in sender.ledger.events(pid) if e.state]
        out.write("  " + " · ".join(f"{at} {state}" for at, state in steps) + "\n")
        try:
            theirs = receiver.ledger.package(pid)
            out.write(
                f"  at {receiver.settings.gateway_id}: {theirs.state}, receipt {theirs.receipt_state}\n"
            )
        except GatewayError:
            out.write(f"  at {receiver.settings.gateway_id}: not received\n")
    out.write("\n")
    for gw in (agency, office):  # the request's answer: owed by the agency, awaited by the office
        requests = [p.package_id for p in gw.ledger.packages() if p.kind == "request"]
        for s in (s for pid in requests for s in gw.duties.standings(pid)):
            d = s.duty
            if d.duty in ("answer", "await"):
                said = {"met": "answered in time", "met-late": "answered late"}.get(
                    s.state, s.state
                )
                out.write(f"{gw.settings.gateway_id:<11} {d.duty} {d.package_id} under {d.regime}, due by "
                          f"{d.due_at[:10] if d.due_at else '-'}: {said}"
                          + (f" by {d.met_by}" if d.met_by and d.met_at else "") + "\n")  # fmt: skip
    out.write("\n")
    for gw in (office, agency):
        verdict = gw.audit.verify()
        packages = gw.ledger.packages()
        outbound = sum(p.direction == "out" for p in packages)
        out.write(f"{gw.settings.gateway_id:<11} ledger: {outbound} sent, {len(packages) - outbound} received; "
                  f"audit trail {'intact' if not verdict.problem else 'BROKEN'} ({verdict.events} events)\n")  # fmt: skip
