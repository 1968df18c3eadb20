"""Four-eyes: a package for a partner that needs approval waits, unsealed, until a second
operator approves it (then it is sealed and delivered to the partner's real sshd) or
rejects it (then it ends cancelled and is never sealed)."""

from __future__ import annotations

import getpass
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from gateway.core.model import Package
from tests.helpers import (
    PARTNER_ID,
    PartnerPgp,
    cli,
    events,
    gateway,
    package,
    remote_files,
    run_once,
    state,
)
from tests.sshd import SshServer

NOTICE = b"<conviction><person>FICTIONAL, Test</person></conviction>\n"


@pytest.fixture
def guarded(exchange: tuple[Home, PartnerPgp, SshServer]) -> tuple[Home, PartnerPgp, SshServer]:
    """The exchange, with convictions for the partner needing a second operator's approval."""
    home = exchange[0]
    done = cli(home, "partner", "set", PARTNER_ID, "--needs-approval", "conviction",
               "--reason", "policy 2026/3: two-person release", actor="carol")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert done.stdout.startswith(f"{PARTNER_ID}: conviction: MOU-TEMPLATE, CoE-1959-Art22; ")
    assert done.stdout.endswith("; serves US; approval needed for conviction\n")
    return exchange


def send_as(home: Home, who: str, tmp: Path, kind: str = "conviction") -> str:
    source = tmp / "notice.xml"
    source.write_bytes(NOTICE)
    done = cli(home, "send", str(source), "--to", PARTNER_ID, "--kind", kind, actor=who)
    assert done.exit_code == 0, done.stderr
    return done.stdout.strip()


def test_approved_by_another_operator_only_then_sealed_and_delivered(
    guarded: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, pgp, server = guarded
    pid = send_as(home, "alice", short_tmp)
    assert state(home, pid) is State.AWAITING_APPROVAL

    run_once(home)  # the daemon leaves it alone: nothing sealed, nothing sent
    assert state(home, pid) is State.AWAITING_APPROVAL
    assert not home.sealed_file(pid).exists()
    assert (home.work / pid / "payload").read_bytes() == NOTICE
    assert remote_files(server) == []

    for who in ("alice", "gateway (sudo by alice)"):
        refused = cli(home, "approve", pid, "--reason", "looks right", actor=who)
        assert refused.exit_code == 37, refused.stderr
        assert refused.stderr == (
            f"error: {pid} was sent by alice; {who} cannot approve or reject it: "
            "a second operator, on their own OS account, must decide\n"
        )
    bypass = cli(home, "retry", pid, "--reason", "send it now", actor="alice")
    assert bypass.exit_code == 31, "retry cannot skip the approval"
    assert bypass.stderr == f"error: {pid} is awaiting-approval: there is nothing to retry\n"
    blank = cli(home, "approve", pid, "--reason", "  ", actor="bob")
    assert blank.exit_code == 2
    assert blank.stderr.endswith(
        "Error: Invalid value for '--reason': must say why (it is recorded in the audit trail), "
        "not be empty\n"
    )
    assert state(home, pid) is State.AWAITING_APPROVAL

    approved = cli(home, "approve", pid, "--reason", "checked against case 4711", actor="bob")
    assert approved.exit_code == 0, approved.stderr
    assert approved.stdout == f"{pid} is received: approved by bob\n"
    again = cli(home, "approve", pid, "--reason", "twice", actor="dave")
    assert again.exit_code == 31
    assert again.stderr == f"error: {pid} is received: it is not awaiting approval\n"

    run_once(home)
    assert state(home, pid) is State.DELIVERED
    plain, _ = pgp.decrypt(server.upload / f"{pid}.pgp")
    with tarfile.open(fileobj=io.BytesIO(plain)) as archive:
        member = archive.extractfile("payload/notice.xml")
        assert member is not None and member.read() == NOTICE

    trail = events(home, pid)
    assert [e.action for e in trail][:3] == ["intake", "approve", "seal"]
    intake, approval = trail[0], trail[1]
    assert (intake.actor, intake.state) == ("alice", "awaiting-approval")
    assert (approval.actor, approval.category, approval.state) == (
        "bob",
        "consultation",
        "received",
    )
    assert json.loads(str(approval.detail)) == {
        "reason": "checked against case 4711",
        "sent_by": "alice",
    }


def test_a_rejected_package_ends_cancelled_and_is_never_sealed(
    guarded: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = guarded
    pid = send_as(home, "alice", short_tmp)
    mine = cli(home, "reject", pid, "--reason", "I changed my mind", actor="alice")
    assert mine.exit_code == 37, mine.stderr

    done = cli(home, "reject", pid, "--reason", "wrong person: case 4711", actor="bob")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == f"{pid} is cancelled: rejected by bob\n"
    assert not (home.work / pid).exists(), "the plaintext is erased"

    run_once(home)
    assert state(home, pid) is State.CANCELLED
    assert not home.sealed_file(pid).exists() and remote_files(server) == []
    trail = events(home, pid)
    assert [e.action for e in trail] == ["intake", "disapprove", "erase"]
    assert (trail[1].actor, trail[1].category, trail[1].state) == (
        "bob",
        "consultation",
        "cancelled",
    )
    assert "seal" not in [e.action for e in events(home)]
    late = cli(home, "approve", pid, "--reason", "too late", actor="carol")
    assert late.exit_code == 31
    assert late.stderr == f"error: {pid} is cancelled: it is not awaiting approval\n"


def test_a_package_awaiting_approval_can_be_cancelled(
    guarded: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = guarded
    pid = send_as(home, "alice", short_tmp)
    done = cli(home, "cancel", pid, "--reason", "sent by mistake", actor="alice")
    assert done.exit_code == 0, done.stderr
    assert state(home, pid) is State.CANCELLED
    assert not (home.work / pid).exists()
    run_once(home)
    assert remote_files(server) == []


def test_kinds_not_named_go_without_approval(
    guarded: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, _ = guarded
    pid = send_as(home, "alice", short_tmp, kind="request")
    assert state(home, pid) is State.RECEIVED
    run_once(home)
    assert state(home, pid) is State.DELIVERED


def test_a_spool_drop_is_dropped_by_the_owner_of_its_file(
    guarded: tuple[Home, PartnerPgp, SshServer],
) -> None:
    home, _, server = guarded
    drop = home.outbound / PARTNER_ID / "conviction" / "notice.xml"
    drop.write_bytes(NOTICE)
    past = time.time() - 60
    os.utime(drop, (past, past))
    run_once(home)  # the daemon takes it in (actor `daemon`), and seals nothing
    [pid] = [p.package_id for p in _outbound(home)]
    assert state(home, pid) is State.AWAITING_APPROVAL and remote_files(server) == []
    intake = events(home, pid)[0]
    me = getpass.getuser()
    assert intake.actor == "daemon" and json.loads(str(intake.detail))["dropped_by"] == me

    refused = cli(home, "approve", pid, "--reason", "mine", actor=me)
    assert refused.exit_code == 37
    assert refused.stderr.startswith(f"error: {pid} was sent by {me}; ")
    assert cli(home, "approve", pid, "--reason", "ok", actor="bob").exit_code == 0
    run_once(home)
    assert package(home, pid).state is State.DELIVERED


def test_partner_settings_for_approval(guarded: tuple[Home, PartnerPgp, SshServer]) -> None:
    home = guarded[0]
    shown = json.loads(cli(home, "partner", "show", PARTNER_ID, "--json").stdout)
    assert shown["needs_approval"] == "conviction"
    bad = cli(home, "partner", "set", PARTNER_ID, "--needs-approval", "notice",
              "--reason", "typo")  # fmt: skip
    assert bad.exit_code == 2
    assert bad.stderr == (
        "error: --needs-approval notice: not a kind; give one of "
        "conviction, extradition, request, response, or all\n"
    )
    both = cli(home, "partner", "set", PARTNER_ID, "--no-approval", "--needs-approval", "all",
               "--reason", "x")  # fmt: skip
    assert both.exit_code == 2
    assert "give --needs-approval KIND or --no-approval, not both" in both.stderr
    nothing = cli(home, "partner", "set", PARTNER_ID, "--reason", "x")
    assert nothing.exit_code == 2
    assert "give --regime, --channel-for, --needs-approval or --no-approval" in nothing.stderr
    off = cli(home, "partner", "set", PARTNER_ID, "--no-approval", "--reason", "policy withdrawn")
    assert off.exit_code == 0 and off.stdout.endswith("; serves US; no approval needed\n")
    with gateway(home) as gw:
        assert gw.ledger.partner(PARTNER_ID).approval is None
        change = [e for e in gw.ledger.events() if e.action == "partner.approval"][-1]
    assert json.loads(str(change.detail)) == {
        "reason": "policy withdrawn",
        "old": "conviction",
        "new": None,
    }


def _outbound(home: Home) -> list[Package]:
    with gateway(home) as gw:
        return list(gw.ledger.packages(direction="out"))


def test_partner_add_names_the_kinds_that_need_approval(
    home: Home, partner_pgp: PartnerPgp
) -> None:
    done = cli(home, "partner", "add", PARTNER_ID, "--openpgp-key", str(partner_pgp.public_key),
               "--fingerprint", partner_pgp.fingerprint, "--pull", "--ssh-key", str(home.ssh_identity_pub),
               "--needs-approval", "response", "--needs-approval", "request", "--reason", "MoU")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    shown = json.loads(cli(home, "partner", "show", PARTNER_ID, "--json").stdout)
    assert shown["needs_approval"] == "request,response"
    [added] = [e for e in events(home) if e.action == "partner.add"]
    assert json.loads(str(added.detail))["approval"] == "request,response"
