"""The disaster drill, with real processes: a backup taken while `gateway run` works, the
home destroyed, restored into a new one, and the daemon started again over a real sshd."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    DaemonProcess,
    Desk,
    cli,
    delivered,
    envelope,
    events,
    gateway,
    leave,
    manifest,
    package,
    partner_pid,
    receipt_json,
    remote_files,
    run_once,
    seal,
    set_setting,
    sign,
    stop_agents,
    wait_for,
)


def outbound(home: Home) -> dict[str, State]:
    """Every outbound package's state."""
    with gateway(home) as gw:
        return {p.package_id: p.state for p in gw.ledger.packages(direction="out")}


def test_disaster_drill(desk: Desk) -> None:
    home, server = desk.home, desk.server
    for name, value in (("daemon.settle_seconds", 1), ("daemon.scan_seconds", 2), ("daemon.poll_seconds", 1),
                        ("retry.first_delay_seconds", 1), ("retry.max_delay_seconds", 2)):  # fmt: skip
        set_setting(home, name, value)
    acked, sha = delivered(desk, "acked.xml")
    awaiting, awaiting_sha = delivered(desk, "awaiting.xml")
    leave(desk, f"{acked}.receipt", sign(desk.pgp, receipt_json(acked, sha)))
    inbound = partner_pid()
    leave(desk, f"{inbound}.pgp", seal(desk, envelope(manifest(desk, inbound))))
    run_once(home)  # acknowledged, delivered awaiting its receipt, accepted and not yet taken
    server.stop()  # the partner is down: what comes next is sealed and waits
    daemon = DaemonProcess(home).start()
    folder = home.outbound / PARTNER_ID / "conviction"
    for n in range(4):
        (folder / f"n{n}.xml.part").write_bytes(f"<n{n}/>".encode())
        os.rename(folder / f"n{n}.xml.part", folder / f"n{n}.xml")
    wait_for(lambda: list(outbound(home).values()).count(State.SEALED) == 4, what="four sealed")
    for n in range(4, 8):  # the daemon is taking these in while the backup is written
        (folder / f"n{n}.xml").write_bytes(f"<n{n}/>".encode())

    tar = desk.tmp / "backups" / "gw.tar"
    tar.parent.mkdir()
    result = cli(home, "backup", str(tar))

    assert result.exit_code == 0, result.stderr
    server.start()  # the lost home goes on: it delivers, and the partner acknowledges one
    leave(desk, f"{awaiting}.receipt", sign(desk.pgp, receipt_json(awaiting, awaiting_sha)))
    wait_for(lambda: all(s in (State.DELIVERED, State.ACKNOWLEDGED) for s in outbound(home).values())
             and len(outbound(home)) == 10, what="the lost home to deliver everything")  # fmt: skip
    daemon.kill()
    on_server = {name: (server.upload / name).stat().st_ino for name in remote_files(server)}
    stop_agents(home.root)
    shutil.rmtree(home.root)  # the disaster

    new = Home(desk.tmp / "new")
    restored = cli(new, "restore", str(tar))
    assert restored.exit_code == 0, restored.stderr
    before = outbound(new)
    assert before[acked] is State.ACKNOWLEDGED and before[awaiting] is State.DELIVERED
    pending = [pid for pid, s in before.items() if s in (State.RECEIVED, State.SEALED)]
    assert len(pending) >= 4, f"the backup held the sealed packages: {before}"
    assert (new.inbound / PARTNER_ID / inbound / "response.xml").exists(), "not yet taken: kept"
    set_setting(new, "daemon.poll_seconds", 1)
    restarted = DaemonProcess(new).start()
    settled = (State.DELIVERED, State.ACKNOWLEDGED, State.HELD)
    try:
        wait_for(lambda: all(s in settled for s in outbound(new).values()),
                 what="the restored home to deliver what it knows")  # fmt: skip
    finally:
        restarted.terminate()

    after = outbound(new)
    assert after[acked] is State.ACKNOWLEDGED, "acknowledged before the backup: still"
    for pid in before:
        assert f"{pid}.pgp" in on_server or after[pid] is State.ACKNOWLEDGED, pid
    for pid in [p for p, s in after.items() if s is State.HELD]:
        # only taken in at the backup, sealed anew after it: its bytes differ from the lost
        # home's upload, which is held for an operator, never overwritten or sent twice
        assert before[pid] is State.RECEIVED and "with other content" in str(
            package(new, pid).last_error
        ), pid
    pending = [pid for pid in pending if after[pid] is not State.HELD]
    names = remote_files(server)
    assert len(names) == len(set(names)) and not [n for n in names if n.startswith(".")]
    for name, inode in on_server.items():  # every file the lost home delivered: not sent again
        assert (server.upload / name).stat().st_ino == inode, f"{name} was uploaded a second time"
    for pid in pending:
        deliveries = [json.loads(str(e.detail)) for e in events(new, pid) if e.action == "deliver"]
        assert [d["already_there"] for d in deliveries] == [True], pid
    verify = cli(new, "audit", "verify")
    assert verify.exit_code == 0, verify.stderr
    assert "restored at event" in verify.stdout and "gw.tar" in verify.stdout
    stop_agents(new.root)
    assert Path(tar).exists()
