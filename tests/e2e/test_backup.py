"""`gateway backup` and `gateway restore`, in-process: real gpg, sshd, SQLite and tar."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import tarfile
from contextlib import closing
from pathlib import Path

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    TEST_REGIMES,
    Desk,
    Templates,
    cli,
    delivered,
    envelope,
    events,
    gateway,
    leave,
    manifest,
    partner_pid,
    receipt_json,
    run_once,
    seal,
    send,
    sign,
    state,
    stop_agents,
)


def busy_home(desk: Desk) -> dict[str, str]:
    """A home with a package in each state a backup must carry; their ids by state."""
    acked, sha = delivered(desk, "a.xml")
    waiting, _ = delivered(desk, "b.xml")
    leave(desk, f"{acked}.receipt", sign(desk.pgp, receipt_json(acked, sha)))
    inbound = partner_pid()
    leave(desk, f"{inbound}.pgp", seal(desk, envelope(manifest(desk, inbound))))
    run_once(desk.home)
    (desk.tmp / "q.xml").write_bytes(b"<queued/>")
    queued = send(desk.home, desk.tmp / "q.xml")
    return {"acknowledged": acked, "delivered": waiting, "accepted": inbound, "received": queued}


def restored_home(desk: Desk, name: str = "new") -> tuple[Home, Path]:
    """Back the desk's home up, and restore it into a new folder."""
    tar = desk.tmp / f"{name}.tar"
    result = cli(desk.home, "backup", str(tar))
    assert result.exit_code == 0, result.stderr
    new = Home(desk.tmp / name)
    result = cli(new, "restore", str(tar))
    assert result.exit_code == 0, result.stderr
    return new, tar


def test_restored_home_holds_every_package_state_and_the_files_still_needed(desk: Desk) -> None:
    ids = busy_home(desk)
    before = events(desk.home)
    own = '[[regime]]\nid = "MOU-XX-2026"\ntitle = "A bilateral memorandum"\n'
    desk.home.regimes.write_text(own)  # the home's own regimes: what its partners may name

    new, tar = restored_home(desk)

    assert new.regimes.read_text() == own

    for expected, pid in ids.items():
        assert state(new, pid) == State(expected)
    with tarfile.open(tar) as archive:
        names = archive.getnames()
    assert names[0] == "manifest.json"
    assert f"spool/work/{ids['received']}/payload" in names, "plaintext not yet sealed"
    assert f"spool/sealed/{ids['delivered']}.pgp" in names, "sealed, not yet receipted"
    assert f"spool/sealed/{ids['acknowledged']}.pgp" not in names, "receipted: not needed"
    assert f"spool/receipts/out/{ids['accepted']}.receipt" in names, "the evidence"
    assert f"spool/receipts/in/{ids['acknowledged']}.receipt" in names, "the evidence"
    taken = new.inbound / PARTNER_ID / ids["accepted"]
    assert sorted(p.name for p in taken.iterdir()) == sorted(
        p.name for p in (desk.home.inbound / PARTNER_ID / ids["accepted"]).iterdir()
    )
    restored = events(new)
    assert restored[: len(before)] == before, (
        "the trail up to the backup is the same, byte for byte"
    )
    restore = next(e for e in restored if e.action == "restore")
    detail = json.loads(str(restore.detail))
    assert detail["backup"] == tar.name
    assert detail["last_event"] == len(before) == restore.id - 1
    recorded = events(desk.home)[-1]
    assert recorded.action == "backup" and json.loads(str(recorded.detail))["last_event"] == len(
        before
    )
    assert restored[restore.id].action == "audit.checkpoint", "the restore is signed at once"
    verify = cli(new, "audit", "verify")
    assert verify.exit_code == 0, verify.stderr
    assert f"restored at event {restore.id}" in verify.stdout
    assert f"which held events up to {detail['last_event']}" in verify.stdout
    stop_agents(new.root)


def test_the_restored_home_delivers_the_queued_package_and_reconciles_the_rest(desk: Desk) -> None:
    ids = busy_home(desk)
    new, _ = restored_home(desk)

    run_once(new)

    assert state(new, ids["received"]) is State.DELIVERED
    assert state(new, ids["acknowledged"]) is State.ACKNOWLEDGED
    stop_agents(new.root)


def test_a_sealed_package_already_on_the_partners_server_is_recorded_not_sent_again(
    desk: Desk,
) -> None:
    (desk.tmp / "s.xml").write_bytes(b"<sealed/>")
    pid = send(desk.home, desk.tmp / "s.xml")
    with gateway(desk.home, "daemon") as gw:
        gw.steps.seal(gw.ledger.package(pid))
    new, _ = restored_home(desk)  # sealed in the backup
    run_once(desk.home)  # the old home delivers it after the backup, then is lost
    remote = desk.server.upload / f"{pid}.pgp"
    first = remote.stat()
    assert state(new, pid) is State.SEALED

    run_once(new)

    assert state(new, pid) is State.DELIVERED
    assert remote.stat().st_ino == first.st_ino, "the partner's file was not uploaded again"
    deliver = [e for e in events(new, pid) if e.action == "deliver"]
    assert len(deliver) == 1 and json.loads(str(deliver[0].detail))["already_there"] is True
    stop_agents(new.root)


def test_restore_refuses_a_folder_that_is_not_empty_and_changes_nothing(desk: Desk) -> None:
    tar = desk.tmp / "b.tar"
    assert cli(desk.home, "backup", str(tar)).exit_code == 0
    target = desk.tmp / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("mine")

    result = cli(target, "restore", str(tar))

    assert result.exit_code == 15
    assert result.stderr == (
        f"error: {target} is not empty (it holds notes.txt): restore into a new, empty folder; "
        "a home is never overwritten by a backup\n"
    )
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert cli(desk.home, "restore", str(tar)).exit_code == 15, "nor into the home itself"


def test_backup_refuses_to_overwrite_a_file(desk: Desk) -> None:
    tar = desk.tmp / "b.tar"
    tar.write_bytes(b"older backup")
    result = cli(desk.home, "backup", str(tar))
    assert result.exit_code == 1
    assert "already exists: a backup never overwrites a file" in result.stderr
    assert tar.read_bytes() == b"older backup"


def rewrite(tar: Path, out: Path, change: dict[str, bytes | None]) -> None:
    """Copy a backup tar, replacing (bytes) or dropping (None) the named members."""
    with tarfile.open(tar) as source, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                if change[member.name] is None:
                    continue
                data = change[member.name]  # type: ignore[assignment]
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))


def test_a_damaged_backup_is_refused_and_leaves_nothing(desk: Desk) -> None:
    tar = desk.tmp / "b.tar"
    assert cli(desk.home, "backup", str(tar)).exit_code == 0
    settings = desk.home.settings.read_bytes()
    cases = {
        "changed": ({"gateway.toml": settings.replace(b"GB-ACRO", b"GB-ACRX")},
                    "gateway.toml in the backup is 2 bytes"),
        "same-size": ({"gateway.toml": settings.replace(b"GB-ACRO", b"GB-ACRX")[: len(settings)]},
                      "gateway.toml in the backup does not match its SHA-256 in the manifest"),
        "dropped": ({"ledger.db": None}, "lacks 1 files its manifest lists, e.g. ledger.db"),
    }  # fmt: skip
    cases["changed"] = ({"gateway.toml": settings + b"# x\n"}, "gateway.toml in the backup is")
    for name, (change, message) in cases.items():
        bad = desk.tmp / f"{name}.tar"
        rewrite(tar, bad, change)
        target = desk.tmp / f"into-{name}"

        result = cli(target, "restore", str(bad))

        assert result.exit_code == 38, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        assert not target.exists(), f"{name}: what was written is removed again"


def test_checkpoints_of_the_lost_home_are_excused_only_by_a_signed_restore(desk: Desk) -> None:
    delivered(desk, "a.xml")
    tar = desk.tmp / "b.tar"
    assert cli(desk.home, "backup", str(tar)).exit_code == 0
    for _ in range(3):  # the old home goes on after its backup, signing checkpoints, then is lost
        delivered(desk, "later.xml")
        assert cli(desk.home, "audit", "checkpoint").exit_code == 0
    new = Home(desk.tmp / "new")
    assert cli(new, "restore", str(tar)).exit_code == 0
    lost = sorted(p.name for p in (desk.home.spool / "audit").glob("*.checkpoint"))[-3:]
    vouching = sorted((new.spool / "audit").glob("*.checkpoint"))[-1]
    audit = new.spool / "audit"
    moved = audit / "vouching.aside"
    vouching.rename(moved)
    for name in lost:  # an operator copies the old home's checkpoints in
        shutil.copy2(desk.home.spool / "audit" / name, audit / name)

    unvouched = cli(new, "audit", "verify")
    moved.rename(vouching)
    vouched = cli(new, "audit", "verify")

    assert unvouched.exit_code == 1
    assert (
        "but no checkpoint signs that restore: the trail may have been cut short"
        in unvouched.stderr
    )
    assert vouched.exit_code == 0, vouched.stderr
    assert "3 checkpoints of the lost home" in vouched.stdout
    stop_agents(new.root)


def test_a_backup_encrypted_to_an_offline_key_opens_only_with_it(desk: Desk) -> None:
    offline = desk.pgp  # a keyring kept away from the gateway
    encrypted = desk.tmp / "b.tar.pgp"

    result = cli(desk.home, "backup", str(encrypted), "--encrypt-to", str(offline.public_key),
                 "--fingerprint", offline.fingerprint)  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert f"encrypted to {offline.fingerprint}" in result.stdout
    refused = cli(desk.tmp / "x", "restore", str(encrypted))
    assert refused.exit_code == 38 and "decrypt it first" in refused.stderr
    plain = offline.gpg("--decrypt", str(encrypted)).stdout
    (desk.tmp / "b.tar").write_bytes(plain)
    assert cli(desk.tmp / "y", "restore", str(desk.tmp / "b.tar")).exit_code == 0
    stop_agents(desk.tmp / "y")
    wrong = cli(desk.home, "backup", str(desk.tmp / "c.tar.pgp"), "--encrypt-to",
                str(offline.public_key), "--fingerprint", "0" * 40)  # fmt: skip
    assert wrong.exit_code == 23 and not (desk.tmp / "c.tar.pgp").exists()
    alone = cli(
        desk.home, "backup", str(desk.tmp / "d.tar.pgp"), "--encrypt-to", str(offline.public_key)
    )
    assert alone.exit_code == 2
    assert (
        alone.stderr == "error: --encrypt-to and --fingerprint go together: give both, or neither\n"
    )


def test_a_package_in_a_pull_partners_mailbox_is_recorded_not_published_again(
    desk: Desk, templates: Templates
) -> None:
    pull = templates.partner(desk.tmp / "au", "AU-AFP")
    try:
        result = cli(desk.home, "partner", "add", "AU-AFP", "--openpgp-key", str(pull.public_key),
                     "--fingerprint", pull.fingerprint, "--pull", "--ssh-key",
                     f"{desk.server.client_key}.pub", "--reason", "pull partner", *TEST_REGIMES)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        (desk.tmp / "p.xml").write_bytes(b"<pull/>")
        result = cli(
            desk.home, "send", str(desk.tmp / "p.xml"), "--to", "AU-AFP", "--kind", "conviction"
        )
        pid = result.stdout.strip()
        run_once(desk.home)
        assert state(desk.home, pid) is State.PUBLISHED
        with closing(sqlite3.connect(desk.home.ledger)) as db:  # backed up between place and record
            db.execute("UPDATE packages SET state = 'sealed' WHERE package_id = ?", [pid])
            db.commit()
        new, tar = restored_home(desk)
        with tarfile.open(tar) as archive:
            assert f"spool/mailbox/AU-AFP/download/{pid}.pgp" in archive.getnames()

        run_once(new)

        assert state(new, pid) is State.PUBLISHED
        [published] = [
            json.loads(str(e.detail)) for e in events(new, pid) if e.action == "publish"
        ][-1:]
        assert published["already_there"] is True
        stop_agents(new.root)
    finally:
        pull.close()


def test_a_package_only_taken_in_at_the_backup_and_delivered_after_it_is_held_not_sent_twice(
    desk: Desk,
) -> None:
    (desk.tmp / "r.xml").write_bytes(b"<received/>")
    pid = send(desk.home, desk.tmp / "r.xml")
    new, _ = restored_home(desk)  # received in the backup, plaintext and all
    run_once(desk.home)  # the old home seals and delivers it, then is lost
    remote = desk.server.upload / f"{pid}.pgp"
    first, uploaded = remote.stat(), remote.read_bytes()

    run_once(new)  # sealed anew: other bytes under the same name

    held = gateway(new)
    try:
        package = held.ledger.package(pid)
    finally:
        held.close()
    assert package.state is State.HELD
    assert "already holds" in str(package.last_error) and "with other content" in str(
        package.last_error
    )
    assert remote.stat().st_ino == first.st_ino and remote.read_bytes() == uploaded
    assert sorted(p.name for p in desk.server.upload.iterdir()) == [f"{pid}.pgp"]
    stop_agents(new.root)
