"""Bulkheads: one partner's poison file or failing turn stops nothing else.

A file from a partner that cannot be read, whatever the error, ends in quarantine with
its reason while the files beside it go on; an error nobody foresaw in one partner's
turn is logged, backs that partner off, and every other partner's turn still runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from gateway.core.model import Partner
from gateway.pipeline import accept
from gateway.pipeline.steps import Steps
from tests.helpers import (
    PAYLOAD,
    PAYLOAD_NAME,
    TEST_REGIMES,
    Desk,
    PartnerPgp,
    cli,
    envelope,
    leave,
    manifest,
    package,
    partner_pid,
    quarantined,
    run_once,
    seal,
    send,
    sparse_tar,
)
from tests.sshd import SshServer

PULL_ID = "AU-AFP"


def test_a_malformed_tar_among_good_packages_is_quarantined_and_the_rest_accepted(
    desk: Desk,
) -> None:
    good = [partner_pid() for _ in range(3)]
    poison = partner_pid()
    for pid in good:
        leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid))))
    leave(desk, f"{poison}.pgp", seal(desk, sparse_tar()))

    run_once(desk.home)

    for pid in good:
        assert package(desk.home, pid).state is State.ACCEPTED
        assert (desk.home.inbound / "US-NCB" / pid / PAYLOAD_NAME).read_bytes() == PAYLOAD
    assert package(desk.home, poison).state is State.REJECTED
    [(report, _)] = quarantined(desk.home)
    assert report["package_id"] == poison and "not a valid uncompressed tar" in report["reason"]
    assert list(desk.server.download.iterdir()) == [], "every file was handled and removed"


def test_an_unexpected_error_opening_one_package_quarantines_it_alone(
    desk: Desk,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good, poison = partner_pid(), partner_pid()
    for pid in (good, poison):
        leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid))))
    unpack = accept.unpack

    def breaks_on_the_poison(tar: Path, out: Path, limit: int) -> object:
        if poison in str(tar):
            raise KeyError("a bug met by this file alone")
        return unpack(tar, out, limit)

    monkeypatch.setattr(accept, "unpack", breaks_on_the_poison)
    run_once(desk.home)

    assert package(desk.home, good).state is State.ACCEPTED
    rejected = package(desk.home, poison)
    assert rejected.state is State.REJECTED
    assert "could not be read (unexpected KeyError)" in str(rejected.last_error)
    [(report, _)] = quarantined(desk.home)
    assert report["package_id"] == poison


def test_an_unforeseen_error_in_one_partners_turn_stops_no_other(
    exchange: tuple[Home, PartnerPgp, SshServer],
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """US-NCB's turn breaks in a way nobody foresaw; AU-AFP's (sorted after it) still runs."""
    home, _, server = exchange
    pull = PartnerPgp(short_tmp / "au", PULL_ID)
    try:
        added = cli(home, "partner", "add", PULL_ID, "--openpgp-key", str(pull.public_key),
                    "--fingerprint", pull.fingerprint, "--pull", "--ssh-key",
                    f"{server.client_key}.pub", *TEST_REGIMES, "--reason", "pull partner")  # fmt: skip
        assert added.exit_code == 0, added.stderr
    finally:
        pull.close()
    (short_tmp / "a.xml").write_bytes(b"<a/>")
    (short_tmp / "b.xml").write_bytes(b"<b/>")
    broken = send(home, short_tmp / "a.xml")
    pulled = cli(home, "send", str(short_tmp / "b.xml"), "--to", PULL_ID, "--kind", "conviction")
    pulled_id = pulled.stdout.strip()
    turn = Steps.turn

    def us_ncb_breaks(steps: Steps, partner: Partner, *args: object) -> None:
        if partner.id == "US-NCB":
            raise RuntimeError("a bug in US-NCB's turn")
        turn(steps, partner, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Steps, "turn", us_ncb_breaks)
    run_once(home)

    assert package(home, pulled_id).state is State.PUBLISHED
    assert (home.mailbox / PULL_ID / "download" / f"{pulled_id}.pgp").exists()
    assert package(home, broken).state is State.SEALED, "waits for its partner's next turn"
