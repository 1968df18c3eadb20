"""Crash windows (SPEC section 10): the gateway killed at an exact step, then started again.

Each test runs `gateway` in a process that SIGKILLs itself at one step (before or after
a named function runs), checks that the kill fell in the window it names, then runs
`gateway run --once` as the next start would, and asserts the end state with the bytes
on both sides: nothing lost, nothing twice, no plaintext or decrypted tar left behind,
nothing stuck.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import paramiko
import pytest

from gateway.adapters.home import Home
from gateway.adapters.sftp import SMALL
from gateway.core.lifecycle import State
from gateway.pipeline import intake
from tests.helpers import (
    PARTNER_ID,
    PAYLOAD,
    PAYLOAD_NAME,
    Desk,
    PartnerPgp,
    actions,
    envelope,
    gateway,
    leave,
    manifest,
    open_our_receipt,
    package,
    partner_pid,
    receipt_json,
    remote_files,
    run_once,
    seal,
    send,
    sha256,
    sign,
)
from tests.sshd import SshServer

#: Runs `gateway ARGV` with `TARGET` ("module:attribute.path") replaced by a function that
#: SIGKILLs the process before the real one runs, or right after it returned; with a
#: MATCH, only at a call whose arguments' repr contains it.
KILLER = """
import importlib, os, signal, sys
target, when, match, *argv = sys.argv[1:]
module, _, path = target.partition(":")
owner = importlib.import_module(module)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real = getattr(owner, name)
def killing(*args, **kwargs):
    hit = match in repr(args)
    if hit and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, killing)
from gateway.cli import main
main(argv, prog_name="gateway")
"""


def killed_at(home: Home, target: str, when: str, *argv: str, match: str = "") -> None:
    """Run `gateway --home HOME ARGV`, killed at `target` (`when`: before or after it)."""
    done = subprocess.run(
        [sys.executable, "-c", KILLER, target, when, match, "--home", str(home.root), *argv],
        capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-3000:]


def leftovers(home: Home) -> list[str]:
    """Whatever lies in the gateway's scratch folders: work, incoming, inbound temporaries."""
    found = [f"work/{p.name}" for p in home.work.iterdir()]
    found += [f"incoming/{p.parent.name}/{p.name}" for p in home.incoming.glob("*/*")]
    found += [f"inbound/{p.parent.name}/{p.name}" for p in home.inbound.glob("*/.*")]
    return found


# -- outbound: `gateway send` ----------------------------------------------------------------


def test_send_killed_mid_copy_leaves_nothing_and_sends_nothing(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = exchange
    (short_tmp / "notice.xml").write_bytes(os.urandom(3 * intake.CHUNK))
    # `_ignore` is what the copy loop reports each chunk to when no bar is shown: killed
    # after the first of three
    killed_at(home, "gateway.pipeline.intake:_ignore", "before",
              "send", str(short_tmp / "notice.xml"), "--to", PARTNER_ID, "--kind", "conviction")  # fmt: skip
    names = sorted(p.name for p in home.work.iterdir())
    assert len(names) == 2 and names[0].endswith(intake.MARK), "killed with its mark held"

    run_once(home)

    assert leftovers(home) == []
    with gateway(home) as gw:
        assert gw.ledger.packages() == [], "`send` printed no id: there is no package"
    assert remote_files(server) == []


def test_send_beside_a_starting_daemon_is_not_swept_away(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon's recovery that runs while `send` copies leaves the copy alone."""
    home, pgp, server = exchange
    payload = os.urandom(200_000)
    (short_tmp / "notice.xml").write_bytes(payload)
    copy = intake.shutil.copyfileobj

    def daemon_starts_meanwhile(*args: object) -> None:
        with gateway(home, "daemon") as daemon:
            daemon.steps.recover()
        copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(intake.shutil, "copyfileobj", daemon_starts_meanwhile)
    pid = send(home, short_tmp / "notice.xml")
    monkeypatch.undo()
    run_once(home)

    assert package(home, pid).state is State.DELIVERED
    data, _ = pgp.decrypt(server.upload / f"{pid}.pgp")
    assert payload in data
    assert leftovers(home) == []


def test_a_received_package_whose_plaintext_is_gone_is_held_once(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = exchange
    (short_tmp / "notice.xml").write_bytes(b"<notice/>")
    pid = send(home, short_tmp / "notice.xml")
    for path in (home.work / pid).iterdir():
        path.unlink()

    run_once(home)
    run_once(home)

    held = package(home, pid)
    assert held.state is State.HELD and "missing from spool/work" in str(held.last_error)
    assert actions(home, pid).count("hold") == 1
    assert remote_files(server) == []


# -- inbound: a partner's package ------------------------------------------------------------


def test_killed_after_delivery_to_inbound_before_accepted_finishes_once(desk: Desk) -> None:
    """The rename into spool/inbound happened, `accepted` was not committed."""
    pid = partner_pid()
    wire = leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid)))).read_bytes()
    killed_at(desk.home, "gateway.pipeline.accept:Accept._receipt_out", "before", "run", "--once")
    assert (desk.home.inbound / PARTNER_ID / pid / PAYLOAD_NAME).exists(), "killed after the rename"
    assert package(desk.home, pid).state is State.FETCHED

    run_once(desk.home)

    assert package(desk.home, pid).state is State.ACCEPTED
    assert actions(desk.home, pid).count("accept") == 1
    folder = desk.home.inbound / PARTNER_ID / pid
    assert (folder / PAYLOAD_NAME).read_bytes() == PAYLOAD
    assert os.listdir(desk.home.inbound / PARTNER_ID) == [pid]
    assert open_our_receipt(desk, pid)["ciphertext_sha256"] == sha256(wire)
    assert not (desk.server.download / f"{pid}.pgp").exists()
    assert leftovers(desk.home) == []


def test_killed_after_accepted_leaves_no_decrypted_tar(desk: Desk) -> None:
    """`accepted` was committed; the decrypted tar in spool/work was not removed yet."""
    pid = partner_pid()
    leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid))))
    killed_at(desk.home, "gateway.adapters.ledger:Ledger.transition", "after", "run", "--once",
              match="'accept'")  # fmt: skip
    assert (desk.home.work / pid / "envelope.tar").exists(), "killed before the clean-up"

    run_once(desk.home)

    assert package(desk.home, pid).state is State.ACCEPTED
    assert actions(desk.home, pid).count("accept") == 1
    assert (desk.home.inbound / PARTNER_ID / pid / PAYLOAD_NAME).read_bytes() == PAYLOAD
    assert not (desk.server.download / f"{pid}.pgp").exists()
    assert f"{pid}.receipt" in remote_files(desk.server)
    assert leftovers(desk.home) == []


# -- inbound: the partner's receipt for our package ------------------------------------------


def test_killed_before_the_receipt_was_applied_applies_it_next_time(
    desk: Desk, short_tmp: Path
) -> None:
    (short_tmp / "notice.xml").write_bytes(b"<notice/>")
    pid = send(desk.home, short_tmp / "notice.xml")
    run_once(desk.home)
    sent = (desk.server.upload / f"{pid}.pgp").read_bytes()
    receipt = sign(desk.pgp, receipt_json(pid, sha256(sent)))
    leave(desk, f"{pid}.receipt", receipt)
    killed_at(desk.home, "gateway.adapters.ledger:Ledger.transition", "before", "run", "--once",
              match="'receipt'")  # fmt: skip
    assert package(desk.home, pid).state is State.DELIVERED

    run_once(desk.home)

    assert package(desk.home, pid).state is State.ACKNOWLEDGED
    assert actions(desk.home, pid).count("receipt") == 1
    assert (desk.home.receipts_in / f"{pid}.receipt").read_bytes() == receipt
    assert not (desk.server.download / f"{pid}.receipt").exists()
    assert leftovers(desk.home) == []


def test_a_server_that_will_not_let_a_stale_part_be_written_again_gets_a_fresh_one(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some servers take new files only: the part a cut upload left can be neither
    written again nor removed there. The upload goes to a fresh hidden name instead.
    (A package above `SMALL`: smaller ones go up together, and one whose part is
    refused there is handed to this same one-at-a-time upload.)"""
    home, pgp, server = exchange
    (short_tmp / "notice.xml").write_bytes(b"<notice/>" + os.urandom(SMALL))
    pid = send(home, short_tmp / "notice.xml")
    stale = server.upload / f".{pid}.pgp.part"
    stale.write_bytes(b"left by an upload cut short")
    refused: list[str] = []
    open_, remove = paramiko.SFTPClient.open, paramiko.SFTPClient.remove

    def new_files_only(sftp: paramiko.SFTPClient, path: str, *args: Any, **kwargs: Any) -> Any:
        if path.endswith(stale.name):
            refused.append(path)
            raise PermissionError(13, "Permission denied")
        return open_(sftp, path, *args, **kwargs)

    def no_removal(sftp: paramiko.SFTPClient, path: str) -> None:
        if path.endswith(stale.name):
            raise PermissionError(13, "Permission denied")
        remove(sftp, path)

    monkeypatch.setattr(paramiko.SFTPClient, "open", new_files_only)
    monkeypatch.setattr(paramiko.SFTPClient, "remove", no_removal)
    run_once(home)

    assert len(refused) == 2, "tried again after trying to remove it, then a fresh name"
    assert package(home, pid).state is State.DELIVERED
    assert sorted(remote_files(server)) == sorted([stale.name, f"{pid}.pgp"])
    data, _ = pgp.decrypt(server.upload / f"{pid}.pgp")
    assert data.count(b"<notice/>") == 1
