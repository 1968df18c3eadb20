"""Integrity you can trust: deleted checkpoints, a damaged or missing ledger, files of the
wrong owner, and root in another user's home are each found and named, never papered over."""

from __future__ import annotations

import os
import pwd
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.errors import LedgerDamaged, LedgerMissing, SpoolDamaged, WrongUser
from tests.helpers import cli, gateway, set_setting, wait_for

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files to another user")


def checkpoints(home: Home, count: int) -> list[Path]:
    """Write `count` checkpoints with `gateway audit checkpoint`; their files."""
    written = []
    for _ in range(count):
        result = cli(home, "audit", "checkpoint")
        assert result.exit_code == 0, result.stderr
        written.append(Path(result.stdout.removeprefix("checkpoint written: ").strip()))
    return written


def lines(home: Home, *args: str) -> tuple[int, list[str]]:
    result = cli(home, *args)
    return result.exit_code, (result.stdout + result.stderr).splitlines()


def test_audit_verify_notices_a_deleted_checkpoint(home: Home) -> None:
    first, second = checkpoints(home, 2)
    assert cli(home, "audit", "verify").exit_code == 0
    first.unlink()

    result = cli(home, "audit", "verify")

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: checkpoint {first.name}, which the ledger records as written, is missing from "
        f"{home.spool / 'audit'}; the trail cannot be trusted until this is explained: restore "
        "spool/audit from backup and investigate who removed it\n"
    )
    code, found = lines(home, "doctor", "--offline")
    assert code == 1
    assert [line for line in found if line.startswith("fail")] == [
        f"fail audit trail: checkpoint {first.name}, which the ledger records as written, is "
        f"missing from {home.spool / 'audit'}: restore spool/audit from backup and investigate "
        "who removed it"
    ]
    assert second.exists()


def test_audit_verify_notices_an_unreadable_checkpoint(home: Home) -> None:
    [written] = checkpoints(home, 1)
    written.unlink()
    written.mkdir()  # in its place, something that cannot be read as a file

    result = cli(home, "audit", "verify")

    assert result.exit_code == 1
    assert result.stderr == (
        f"error: checkpoint {written.name} cannot be read (Is a directory); the trail cannot be "
        "trusted until this is explained: check the owner and permissions of "
        f"{home.spool / 'audit'}\n"
    )


def test_a_ledger_that_is_no_database_is_called_damaged_not_a_permission_problem(
    home: Home,
) -> None:
    home.ledger.write_bytes(b"this is not what the gateway wrote " * 200)

    result = cli(home, "status")

    assert result.exit_code == LedgerDamaged.exit_code == 33
    assert result.stderr == (
        f"error: the ledger {home.ledger} is damaged (file is not a database): stop the daemon, "
        "keep the file aside, and restore ledger.db from backup\n"
    )
    code, found = lines(home, "doctor", "--offline")
    assert code == 1
    assert found == [f"fail ledger: {result.stderr.removeprefix('error: ').strip()}"]


def test_doctor_runs_quick_check_and_finds_a_malformed_page(home: Home) -> None:
    with gateway(home) as gw:
        for n in range(400):  # enough rows for the events table to span many pages
            gw.ledger.record("test.filler", detail={"n": n, "text": "x" * 200})
    raw = sqlite3.connect(home.ledger)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    pages = raw.execute("PRAGMA page_count").fetchone()[0]
    raw.close()
    with home.ledger.open("r+b") as f:  # scribble over a page in the middle of the file
        f.seek(page_size * (pages // 2))
        f.write(b"\xff" * page_size)

    code, found = lines(home, "doctor", "--offline")

    assert code == 1
    failing = [line for line in found if line.startswith("fail")]
    assert len(failing) == 1, found
    assert failing[0].startswith("fail ledger.db is damaged: SQLite's quick_check found "), failing
    assert "restore ledger.db from backup" in failing[0]
    assert "permissions" not in failing[0]


def test_no_command_makes_an_empty_ledger_in_place_of_a_lost_one(home: Home) -> None:
    home.ledger.unlink()

    for args in (("status",), ("run", "--once"), ("audit", "verify"), ("ledger", "list")):
        result = cli(home, *args)
        assert result.exit_code == LedgerMissing.exit_code == 36, args
        assert result.stderr == (
            f"error: the ledger {home.ledger} is missing, though this home was initialised; no "
            "new ledger was made: restore ledger.db from backup\n"
        )
        assert not home.ledger.exists(), args
    code, found = lines(home, "doctor", "--offline")
    assert code == 1 and found == [f"fail ledger: {result.stderr.removeprefix('error: ').strip()}"]
    assert not home.ledger.exists()
    assert cli(home, "init", "--id", "GB-ACRO").exit_code == 12  # init does not either


@as_root
def test_root_is_refused_in_a_home_that_belongs_to_another_user(home: Home) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(home.root, nobody, -1)
    before = sorted(str(p) for p in home.root.rglob("*"))

    result = cli(home, "audit", "checkpoint")

    assert result.exit_code == WrongUser.exit_code == 16
    assert result.stderr == (
        f"error: {home.root} belongs to nobody, and this command runs as root: files it wrote "
        "would be root's and nobody could no longer use them; nothing was changed: run it as "
        "nobody (`sudo -u nobody gateway ...`)\n"
    )
    assert sorted(str(p) for p in home.root.rglob("*")) == before
    assert cli(home, "status").exit_code == 16
    fresh = Home(home.root / "nested")
    fresh.root.mkdir()
    os.chown(fresh.root, nobody, -1)
    assert cli(fresh, "init", "--id", "GB-ACRO").exit_code == 16
    assert list(fresh.root.iterdir()) == []


@as_root
def test_a_checkpoint_that_cannot_be_written_is_an_error_and_logged_as_one(home: Home) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    audit = home.spool / "audit"
    audit.mkdir(mode=0o700)
    os.chown(audit, nobody, -1)  # as a command run by the wrong user once left it

    result = cli(home, "audit", "checkpoint")

    assert result.exit_code == SpoolDamaged.exit_code == 34
    assert result.stderr == (
        f"error: no audit checkpoint can be written in {audit}: it is owned by nobody and this "
        f"process runs as root; give it back to the gateway's user (`chown -R root {audit}`)\n"
    )
    assert list(audit.iterdir()) == []
    code, found = lines(home, "doctor", "--offline")
    assert code == 1
    assert (
        f"fail {audit} is owned by nobody, not by root who owns the home: chown -R root {audit}"
        in found
    )

    set_setting(home, "audit.checkpoint_seconds", 1)
    log = home.root / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "gateway", "--home", str(home.root), "run"],
                                  stdout=out, stderr=out, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for(lambda: "audit checkpoint NOT written" in log.read_text(), 60,
                     "the daemon to report the checkpoint it could not write")  # fmt: skip
        finally:
            daemon.terminate()
            daemon.wait(30)
    reported = [line for line in log.read_text().splitlines() if "checkpoint NOT written" in line]
    assert reported[0].split(" ", 3)[2:] == [
        "ERROR",
        f"audit checkpoint NOT written: no audit checkpoint can be written in {audit}: it is owned "
        f"by nobody and this process runs as root; give it back to the gateway's user "
        f"(`chown -R root {audit}`)",
    ]
    assert list(audit.iterdir()) == []


@as_root
def test_doctor_names_each_file_of_the_home_owned_by_someone_else(home: Home) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    [secret] = sorted((home.gnupg / "private-keys-v1.d").glob("*.key"))[:1]
    for path in (secret, home.sealed, home.ledger):
        os.chown(path, nobody, -1)

    code, found = lines(home, "doctor", "--offline")

    assert code == 1
    # SQLite, run as root, gives the ledger's -wal and -shm to the ledger's owner: named too.
    named = [home.ledger, home.ledger.with_name("ledger.db-wal"), home.ledger.with_name("ledger.db-shm"),
             secret, home.sealed]  # fmt: skip
    expected = [f"fail {p} is owned by nobody, not by root who owns the home: chown -R root {p}"
                for p in named]  # fmt: skip
    failing = [line for line in found if line.startswith("fail")]
    assert set(expected) - set(failing) <= set(expected[1:3]), failing
    assert set(failing) <= set(expected), failing
