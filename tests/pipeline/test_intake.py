"""Taking files in from the outbound spool: what is taken, what is left, what is quarantined."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.errors import LedgerBusy
from gateway.core.lifecycle import State
from gateway.pipeline.intake import ORIGIN, PAYLOAD, Intake
from tests.helpers import PARTNER_ID, PartnerPgp, gateway, partner_add


@pytest.fixture
def spool(home: Home, partner_pgp: PartnerPgp) -> Path:
    """The partner's conviction folder in the outbound spool."""
    assert partner_add(home, partner_pgp.public_key, partner_pgp.fingerprint)[0] == 0
    return home.outbound / PARTNER_ID / "conviction"


def old(path: Path) -> Path:
    """Backdate an entry so it counts as settled."""
    past = time.time() - 60
    os.utime(path, (past, past), follow_symlinks=False)
    return path


def drop(path: Path, data: bytes = b"x") -> Path:
    """Write a file as a producer would have, long enough ago to be settled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return old(path)


def take_in(home: Home) -> int:
    with gateway(home, "daemon") as gw:
        return gw.steps.take_in()


def quarantined(home: Home) -> dict[str, dict[str, object]]:
    """Reason files in quarantine, by original name."""
    found = {}
    for reason in home.quarantine.glob("*.reason.json"):
        report = json.loads(reason.read_text())
        found[report["original_name"]] = report
    return found


def test_hostile_entries_are_quarantined_with_reasons_and_never_read(
    home: Home, spool: Path, short_tmp: Path
) -> None:
    secret = short_tmp / "secret.txt"
    secret.write_bytes(b"never to be read")
    (spool / "link.xml").symlink_to(secret)
    os.link(secret, spool / "hardlink.xml")
    os.mkfifo(spool / "pipe.xml")
    (spool / "folder").mkdir()
    for name in ("link.xml", "hardlink.xml", "pipe.xml", "folder"):
        old(spool / name)
    drop(spool / "empty.xml", b"")
    drop(spool / "new\nline.xml")
    bad_name = os.fsencode(spool) + b"/bad\xffname.xml"
    with open(bad_name, "wb") as f:
        f.write(b"x")
    os.utime(bad_name, (0, 0))
    drop(home.outbound / PARTNER_ID / "stray.xml")
    drop(home.outbound / PARTNER_ID / "gossip" / "gossip.xml")
    drop(home.outbound / "FR-CJN" / "conviction" / "fr.xml")

    take_in(home)

    reasons = quarantined(home)
    assert set(reasons) == {"link.xml", "hardlink.xml", "pipe.xml", "folder", "empty.xml",
                            "new\nline.xml", "bad\\xffname.xml", "stray.xml", "gossip.xml",
                            "fr.xml"}  # fmt: skip
    assert "not a regular file" in str(reasons["link.xml"]["reason"])
    assert reasons["link.xml"]["what"] == "symbolic link"
    assert reasons["pipe.xml"]["what"] == "FIFO"
    assert reasons["folder"]["what"] == "folder"
    assert "hard links" in str(reasons["hardlink.xml"]["reason"])
    assert "empty" in str(reasons["empty.xml"]["reason"])
    assert "control" in str(reasons["new\nline.xml"]["reason"])
    assert "UTF-8" in str(reasons["bad\\xffname.xml"]["reason"])
    assert "outside spool/outbound/<PARTNER>/<kind>/" in str(reasons["stray.xml"]["reason"])
    assert "not a package kind" in str(reasons["gossip.xml"]["reason"])
    assert "unknown partner FR-CJN" in str(reasons["fr.xml"]["reason"])
    for report in reasons.values():
        assert report["what_to_do"] and report["at"]
    assert not any(spool.iterdir()), "everything left the outbound folder"
    assert (home.quarantine / str(reasons["link.xml"]["package_id"])).is_symlink(), (
        "the link itself moved"
    )
    assert secret.read_bytes() == b"never to be read"
    with gateway(home) as gw:
        packages = gw.ledger.packages()
    assert len(packages) == 10
    assert {p.state for p in packages} == {State.REJECTED}
    assert not any(home.work.iterdir())


def test_temporary_names_are_left_for_their_producer(home: Home, spool: Path) -> None:
    for name in ("a.xml.part", "a.tmp", "a.partial", "a~", ".hidden"):
        drop(spool / name)

    take_in(home)

    assert sorted(os.listdir(spool)) == sorted(
        [".hidden", "a.partial", "a.tmp", "a.xml.part", "a~"]
    )
    with gateway(home) as gw:
        assert gw.ledger.packages() == []


def test_a_file_still_being_written_waits_until_it_settles(home: Home, spool: Path) -> None:
    fresh = spool / "fresh.xml"
    fresh.write_bytes(b"half")

    assert take_in(home) == 1, "reported as unsettled"
    assert fresh.exists()

    old(fresh)
    assert take_in(home) == 0
    assert not fresh.exists()
    with gateway(home) as gw:
        [package] = gw.ledger.packages()
    assert package.state is State.RECEIVED
    assert package.payload_size == 4


def test_oversized_file_is_quarantined(home: Home, spool: Path) -> None:
    text = home.settings.read_text().replace(
        "max_package_bytes = 2147483648", "max_package_bytes = 10"
    )
    home.settings.write_text(text)
    drop(spool / "big.xml", b"x" * 11)

    take_in(home)

    assert "max_package_bytes" in str(quarantined(home)["big.xml"]["reason"])


def test_crash_between_move_and_ledger_is_finished_on_restart(home: Home, spool: Path) -> None:
    """A work folder with origin.json and payload but no ledger row: taken in, once."""
    with gateway(home) as gw:
        intake = Intake(gw.home, gw.ledger, gw.settings, gw.duties)
        moved = home.work / "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"
        moved.mkdir()
        (moved / ORIGIN).write_text(
            json.dumps({"partner": PARTNER_ID, "kind": "conviction", "name": "n.xml"})
        )
        (moved / PAYLOAD).write_bytes(b"notice")
        unfinished_copy = home.work / "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1N"
        unfinished_copy.mkdir()
        (unfinished_copy / ".payload.tmp").write_bytes(b"half")

        recovered = intake.recover()
        again = intake.recover()

        assert [p.package_id for p in recovered] == [moved.name]
        assert again == []
        assert gw.ledger.package(moved.name).state is State.RECEIVED
        assert gw.ledger.package(moved.name).payload_name == "n.xml"
        assert not unfinished_copy.exists()


def test_a_file_moved_in_but_not_recorded_is_recorded_at_the_next_scan(
    home: Home, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger busy just after the move: the spool no longer shows the file, so the
    scan's `finish_stranded` records it then, once."""
    path = drop(spool / "notice.xml", b"<notice/>")
    with gateway(home, "daemon") as gw:
        real = gw.duties.admit

        def busy(*args: object, **kwargs: object) -> object:
            raise LedgerBusy("the ledger is busy: test")

        monkeypatch.setattr(gw.duties, "admit", busy)
        with pytest.raises(LedgerBusy):
            gw.steps.take_in()
        assert not path.exists() and gw.ledger.packages() == []
        assert gw.steps.intake.finish_stranded() == []  # still busy: kept for the next scan
        monkeypatch.setattr(gw.duties, "admit", real)

        recorded = gw.steps.intake.finish_stranded()

        assert [p.payload_name for p in recorded] == ["notice.xml"]
        assert gw.steps.intake.finish_stranded() == []
        assert [(p.package_id, p.state) for p in gw.ledger.packages()] == [
            (recorded[0].package_id, State.RECEIVED)
        ]


def test_files_taken_together_are_recorded_in_one_commit_and_a_refused_one_on_its_own(
    home: Home, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One commit for the files of one look at the spool: the ledger failing on the third
    records none of them and loses none; the empty file among them is quarantined and
    recorded all the same; the next scan records the rest, once."""
    names = [f"notice-{n}.xml" for n in range(4)]
    for name in names:
        drop(spool / name, name.encode())
    drop(spool / "empty.xml", b"")
    with gateway(home, "daemon") as gw:
        real, added = gw.duties.obligations.add, []

        def busy_on_the_third(terms: object) -> None:
            added.append(terms)
            if len(added) == 3:
                raise LedgerBusy("the ledger is busy: test")
            real(terms)  # type: ignore[arg-type]

        monkeypatch.setattr(gw.duties.obligations, "add", busy_on_the_third)
        with pytest.raises(LedgerBusy):
            gw.steps.take_in()

        assert gw.ledger.packages(state=State.RECEIVED) == []
        [rejected] = gw.ledger.packages(state=State.REJECTED)
        assert rejected.last_error == "the file is empty: nothing to send"
        assert sorted(quarantined(home)) == ["empty.xml"]
        assert list(spool.iterdir()) == []
        moved = sorted(
            json.loads((folder / ORIGIN).read_text())["name"] for folder in home.work.iterdir()
        )
        assert moved == names

        monkeypatch.setattr(gw.duties.obligations, "add", real)
        recorded = gw.steps.intake.finish_stranded()

        assert sorted(p.payload_name for p in recorded) == names
        assert gw.steps.intake.finish_stranded() == []
        received = gw.ledger.packages(state=State.RECEIVED)
        assert sorted(p.payload_name for p in received) == names
        assert [(p.payload_sha256 is not None) for p in received] == [True] * 4
