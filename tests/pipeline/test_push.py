"""Seal and push, end to end: a real gateway, real gpg, a real OpenSSH sshd as the partner.

The partner's side is played by the plain `gpg` command line and `sq` (Sequoia), so what
is asserted is what a partner agency with no gateway of its own would see.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.sftp import CMD_STATUS, SFTP_OK

from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.sftp import Endpoint, SftpPartner, load_key
from gateway.core.errors import TransferFailed
from gateway.core.lifecycle import DUE_TO_SEAL, State
from gateway.core.model import Outgoing, Package, Placed
from gateway.pipeline import deliver as delivery
from gateway.pipeline.schedule import GATHER, GATHER_SECONDS
from tests.helpers import (
    GATEWAY_ID,
    PARTNER_ID,
    ManualClock,
    PartnerPgp,
    add_partner,
    cli,
    events,
    gateway,
    package,
    remote_files,
    retry_due,
    run_once,
    send,
    state,
)
from tests.sshd import SshServer


def test_package_on_the_partner_decrypts_to_the_original(exchange: tuple[Home, PartnerPgp, SshServer],
                                                         short_tmp: Path) -> None:  # fmt: skip
    home, pgp, server = exchange
    payload = os.urandom(300_000)
    source = short_tmp / "notice é.xml"
    source.write_bytes(payload)

    pid = send(home, source, "--ref", "CASE-42", "--legal-basis", "CoE-1959-Art22")
    run_once(home)

    assert state(home, pid) is State.DELIVERED
    assert remote_files(server) == [f"{pid}.pgp"], "exactly one file, no temporary left behind"
    sealed = server.upload / f"{pid}.pgp"
    plaintext, status = pgp.decrypt(sealed)
    with gateway(home) as gw:
        own_key = gw.own_key
        package = gw.ledger.package(pid)
    assert any(line.startswith(f"VALIDSIG {own_key} ") for line in status), (
        "signed by the gateway's key"
    )
    assert "DECRYPTION_OKAY" in status
    assert any(line.startswith("DECRYPTION_INFO 2 9") for line in status), "AES-256 with MDC"

    with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["manifest.json", "payload/notice é.xml"]
        manifest = json.loads(tar.extractfile(members[0]).read())  # type: ignore[union-attr]
        assert tar.extractfile(members[1]).read() == payload  # type: ignore[union-attr]
    assert manifest["schema"] == "gateway-envelope/1"
    assert manifest["package_id"] == pid
    assert manifest["kind"] == "conviction"
    assert manifest["sender"] == {"id": GATEWAY_ID, "key": own_key}
    assert manifest["recipient"] == {"id": PARTNER_ID, "key": pgp.fingerprint}
    assert manifest["payload"] == {"name": "notice é.xml", "size": len(payload),
                                   "sha256": hashlib.sha256(payload).hexdigest()}  # fmt: skip
    assert manifest["reference"] == "CASE-42"
    assert manifest["legal_basis"] == "CoE-1959-Art22"

    assert package.ciphertext_sha256 == hashlib.sha256(sealed.read_bytes()).hexdigest()
    assert not any((home.work).iterdir()), "no plaintext stays in the spool after sealing"


def test_a_large_package_goes_up_while_sealed_and_shows_only_after_the_checkpoint(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, pgp, server = exchange
    monkeypatch.setattr(delivery, "STREAM_FROM", 1024 * 1024)
    payload = os.urandom(3 * 1024 * 1024)
    source = short_tmp / "large.bin"
    source.write_bytes(payload)
    pid = send(home, source)
    at_checkpoint: list[tuple[str, int]] = []
    transition = Ledger.transition

    def spy(ledger: Ledger, package_id: str, new: State, *args: Any, **kwargs: Any) -> Package:
        if new is State.SEALED:  # what the partner could see when `sealed` is recorded
            at_checkpoint.extend((p.name, p.stat().st_size) for p in server.upload.iterdir())
        return transition(ledger, package_id, new, *args, **kwargs)

    def unused(*args: object) -> None:
        raise AssertionError("uploaded again after sealing")

    monkeypatch.setattr(Ledger, "transition", spy)
    monkeypatch.setattr(SftpPartner, "put_atomic", unused)
    run_once(home)

    with gateway(home) as gw:
        package = gw.ledger.package(pid)
        actions = [e.action for e in gw.ledger.events(pid)]
    assert package.state is State.DELIVERED
    assert at_checkpoint == [(f".{pid}.pgp.part", package.ciphertext_size)], (
        "all bytes up under the hidden name, nothing under the final one"
    )
    assert actions == ["intake", "deliver.attempt", "seal", "erase", "deliver"]
    assert remote_files(server) == [f"{pid}.pgp"]
    sealed = server.upload / f"{pid}.pgp"
    assert package.ciphertext_sha256 == hashlib.sha256(sealed.read_bytes()).hexdigest()
    assert sealed.read_bytes() == home.sealed_file(pid).read_bytes()
    plaintext, status = pgp.decrypt(sealed)
    assert "DECRYPTION_OKAY" in status
    with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
        assert tar.extractfile("payload/large.bin").read() == payload  # type: ignore[union-attr]


def test_a_turn_during_the_upload_beside_gpg_leaves_that_package_alone(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between `sealed` and the rename, the package is due: a partner turn on another
    worker must not upload it too (its `.part` would be emptied under the rename)."""
    home, _, server = exchange
    monkeypatch.setattr(delivery, "STREAM_FROM", 1024 * 1024)
    (short_tmp / "large.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    pid = send(home, short_tmp / "large.bin")
    place, seen = SftpPartner.place, list[tuple[object, object]]()
    with gateway(home, "daemon") as gw:

        def turn_first(sftp: SftpPartner, name: str, size: int, sha256: str) -> Any:
            if not seen:  # the upload beside gpg, about to rename
                seen.append(("turn", None))
                partner, package = gw.ledger.partner(PARTNER_ID), gw.ledger.package(pid)
                gw.steps.turn(partner, [package], poll=False)  # as another worker would
                seen.append((gw.ledger.package(pid).state, remote_files(server)))
            return place(sftp, name, size, sha256)

        monkeypatch.setattr(SftpPartner, "place", turn_first)
        try:
            gw.steps.seal(gw.ledger.package(pid))
        finally:
            gw.sessions.close_idle(0)
        done = gw.ledger.package(pid)
        actions = [e.action for e in gw.ledger.events(pid)]
    assert seen[1:] == [(State.SEALED, [f".{pid}.pgp.part"])], "the turn left it alone"
    assert done.state is State.DELIVERED
    assert (actions.count("deliver.attempt"), actions.count("deliver")) == (1, 1)
    assert remote_files(server) == [f"{pid}.pgp"]


def test_a_tee_that_breaks_leaves_the_hash_of_the_whole_sealed_file(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """Whatever a tee raises, the follower still reads and hashes every byte gpg wrote."""
    home, _, _ = exchange
    (short_tmp / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    pid = send(home, short_tmp / "large.bin")

    class Breaks:
        block, whole, writes = 64 * 1024, False, 0

        def write(self, chunk: bytes) -> None:
            self.writes += 1
            if self.writes == 3:
                raise RuntimeError("a bug in the tee")

        def close(self) -> None:
            self.whole = True

    tee = Breaks()
    with gateway(home, "daemon") as gw:
        package = gw.ledger.package(pid)
        sealed = gw.steps.sealer.seal(package, gw.ledger.partner(str(package.partner)), tee=tee)
    data = home.sealed_file(pid).read_bytes()
    assert (tee.writes, tee.whole) == (3, False), "dropped at its failure, never closed"
    assert (sealed.ciphertext_size, sealed.ciphertext_sha256) == (
        len(data), hashlib.sha256(data).hexdigest())  # fmt: skip


def test_package_is_hidden_recipient_uncompressed_with_empty_literal_name(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, pgp, server = exchange
    (short_tmp / "n.xml").write_bytes(b"<notice/>" * 1000)
    pid = send(home, short_tmp / "n.xml")
    run_once(home)

    packets = pgp.gpg(
        "--list-packets", str(server.upload / f"{pid}.pgp"), check=False
    ).stdout.decode()
    assert "keyid 0000000000000000" in packets, "recipient key id is hidden"
    assert "compressed packet" not in packets
    assert 'name=""' in packets, "literal data carries no file name"


def test_sequoia_decrypts_and_verifies_the_package(exchange: tuple[Home, PartnerPgp, SshServer],
                                                  short_tmp: Path) -> None:  # fmt: skip
    home, pgp, server = exchange
    payload = b"conviction notice for an independent OpenPGP implementation\n"
    (short_tmp / "n.txt").write_bytes(payload)
    pid = send(home, short_tmp / "n.txt")
    run_once(home)

    secret = short_tmp / "partner.sec"
    secret.write_bytes(pgp.gpg("--export-secret-keys", pgp.fingerprint).stdout)
    cert = short_tmp / "gateway.asc"
    cert.write_text(cli(home, "keys", "export", "--openpgp").stdout)
    done = subprocess.run(
        ["sq", "decrypt", "--recipient-key", str(secret), "--signer-cert", str(cert),
         str(server.upload / f"{pid}.pgp")],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert b"1 good signature" in done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        assert tar.extractfile("payload/n.txt").read() == payload  # type: ignore[union-attr]


def test_host_key_mismatch_sends_nothing_and_holds(home: Home, partner_pgp: PartnerPgp,
                                                   server: SshServer, short_tmp: Path) -> None:  # fmt: skip
    impostor = SshServer(short_tmp / "impostor")  # only its key is used: the one we pin
    add_partner(home, partner_pgp, server, host_key=impostor.host_key_line)
    (short_tmp / "n.xml").write_bytes(b"secret notice")
    pid = send(home, short_tmp / "n.xml")

    run_once(home)

    assert remote_files(server) == []
    with gateway(home) as gw:
        package = gw.ledger.package(pid)
    assert package.state is State.HELD
    assert "not the one pinned" in str(package.last_error)
    shown = json.loads(cli(home, "partner", "show", PARTNER_ID, "--json").stdout)
    assert shown["health"] == "down" and "not the one pinned" in shown["last_error"]


def test_a_turn_soon_after_another_reuses_its_session_unless_the_pin_changed(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _, server = exchange
    connects: list[str] = []
    connect = SftpPartner._connect

    def counted(sftp: SftpPartner) -> None:
        connects.append(sftp.endpoint.host)
        connect(sftp)

    monkeypatch.setattr(SftpPartner, "_connect", counted)
    with gateway(home, "daemon") as gw:

        def turn(name: str) -> Package:
            (short_tmp / name).write_bytes(b"<notice/>")
            package = gw.steps.intake.copy_in(short_tmp / name, PARTNER_ID, "conviction")
            gw.steps.seal(package)
            gw.steps.turn(gw.ledger.partner(PARTNER_ID), [gw.ledger.package(package.package_id)], poll=True)  # fmt: skip
            return gw.ledger.package(package.package_id)

        try:
            assert [turn(f"n{n}.xml").state for n in range(3)] == [State.DELIVERED] * 3
            assert len(connects) == 1, "deliveries and polls of later turns used the first session"

            impostor = SshServer(short_tmp / "impostor")  # only its key is used
            result = cli(home, "partner", "set-host-key", PARTNER_ID, "--host-key",
                         impostor.host_key_line, "--reason", "test: re-pinned")  # fmt: skip
            assert result.exit_code == 0, result.stderr
            held = turn("after.xml")
            assert len(connects) == 2, "the kept session was not used once the pin changed"
            assert held.state is State.HELD and "not the one pinned" in str(held.last_error)

            gw.sessions.close_idle(0)
            gw.sessions.keep_seconds = 0.0
            cli(home, "partner", "set-host-key", PARTNER_ID, "--host-key", server.host_key_line,
                "--reason", "test: the right key again")  # fmt: skip
            assert turn("m.xml").state is State.DELIVERED
            assert turn("m2.xml").state is State.DELIVERED
            assert len(connects) == 4, "a session idle past KEEP_SECONDS is not used"
        finally:
            gw.sessions.close_idle(0)
    assert len(remote_files(server)) == 5


def test_partner_down_then_back_delivers_once(exchange: tuple[Home, PartnerPgp, SshServer],
                                              short_tmp: Path, clock: ManualClock) -> None:  # fmt: skip
    home, _, server = exchange
    (short_tmp / "n.xml").write_bytes(b"notice")
    pid = send(home, short_tmp / "n.xml", clock=clock)
    server.stop()

    run_once(home, clock)

    with gateway(home) as gw:
        waiting = gw.ledger.package(pid)
    assert waiting.state is State.SEALED
    assert waiting.failures == 1
    assert waiting.next_attempt_at is not None
    assert "will retry" in str(waiting.last_error)

    server.start()
    run_once(home, clock)  # not due yet: nothing happens
    assert state(home, pid) is State.SEALED
    retry_due(home, pid, clock)  # time passes: the retry becomes due
    run_once(home, clock)
    assert state(home, pid) is State.DELIVERED
    assert remote_files(server) == [f"{pid}.pgp"]


def test_delivery_cut_after_rename_is_finished_not_repeated(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """A crash after the remote rename, before the ledger said `delivered`: no second copy."""
    home, _, server = exchange
    (short_tmp / "n.xml").write_bytes(b"notice")
    pid = send(home, short_tmp / "n.xml")
    run_once(home)
    remote = server.upload / f"{pid}.pgp"
    first = remote.stat()
    with gateway(home) as gw:  # put the ledger back as it was before the crash
        gw.ledger.db["packages"].update(pid, {"state": "sealed"})

    run_once(home)

    with gateway(home) as gw:
        events = [e.action for e in gw.ledger.events(pid)]
        delivered = [e for e in gw.ledger.events(pid) if e.action == "deliver"]
    assert state(home, pid) is State.DELIVERED
    assert remote_files(server) == [f"{pid}.pgp"]
    assert remote.stat().st_mtime_ns == first.st_mtime_ns, "the remote file was not written again"
    assert json.loads(str(delivered[-1].detail))["already_there"] is True
    assert events.count("deliver") == 2


def test_different_file_under_the_same_name_is_not_overwritten(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = exchange
    (short_tmp / "n.xml").write_bytes(b"notice")
    pid = send(home, short_tmp / "n.xml")
    squatter = server.upload / f"{pid}.pgp"
    squatter.write_bytes(b"someone else's bytes")

    run_once(home)

    assert squatter.read_bytes() == b"someone else's bytes"
    assert remote_files(server) == [f"{pid}.pgp"]
    with gateway(home) as gw:
        package = gw.ledger.package(pid)
    assert package.state is State.HELD
    assert "other content" in str(package.last_error)


def test_file_renamed_into_the_spool_is_delivered(
    exchange: tuple[Home, PartnerPgp, SshServer], clock: ManualClock
) -> None:
    home, pgp, server = exchange
    folder = home.outbound / PARTNER_ID / "extradition"
    (folder / "surrender.xml.part").write_bytes(b"<surrender/>")
    os.rename(folder / "surrender.xml.part", folder / "surrender.xml")

    run_once(home, clock)  # waits on the clock for the file to settle: the clock moves

    with gateway(home) as gw:
        [package] = gw.ledger.packages(partner=PARTNER_ID)
    assert package.state is State.DELIVERED
    assert package.kind == "extradition"
    assert not (folder / "surrender.xml").exists()
    plaintext, _ = pgp.decrypt(server.upload / f"{package.package_id}.pgp")
    with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
        assert tar.extractfile("payload/surrender.xml").read() == b"<surrender/>"  # type: ignore[union-attr]


def test_operator_retry_releases_a_held_package(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = exchange
    (short_tmp / "n.xml").write_bytes(b"notice")
    pid = send(home, short_tmp / "n.xml")
    (server.upload / f"{pid}.pgp").write_bytes(b"someone else's bytes")
    run_once(home)
    assert state(home, pid) is State.HELD

    (server.upload / f"{pid}.pgp").unlink()  # the partner cleared the conflict
    assert cli(home, "retry", pid).exit_code == 2, "a reason is required"
    released = cli(home, "retry", pid, "--reason", "partner removed the stray file")
    assert released.exit_code == 0, released.stderr
    assert "sealed" in released.stdout
    run_once(home)

    assert state(home, pid) is State.DELIVERED
    with gateway(home) as gw:
        [event] = [e for e in gw.ledger.events(pid) if e.action == "retry"]
    assert event.actor != "daemon"
    assert json.loads(str(event.detail)) == {
        "reason": "partner removed the stray file",
        "was": "held",
    }


def test_operator_cancel_erases_and_sends_nothing(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = exchange
    (short_tmp / "n.xml").write_bytes(b"notice for the wrong country")
    pid = send(home, short_tmp / "n.xml")

    cancelled = cli(home, "cancel", pid, "--reason", "wrong partner")
    run_once(home)

    assert cancelled.exit_code == 0, cancelled.stderr
    assert state(home, pid) is State.CANCELLED
    assert remote_files(server) == []
    assert not (home.work / pid).exists()
    with gateway(home) as gw:
        erased = [json.loads(str(e.detail)) for e in gw.ledger.events(pid) if e.action == "erase"]
    assert erased == [{"what": "plaintext payload", "reason": "cancelled"}]
    again = cli(home, "cancel", pid, "--reason", "twice")
    assert again.exit_code == 31 and "too late to cancel" in again.stderr  # IllegalTransition


def test_an_old_server_is_reached_only_once_its_partner_is_set_to_legacy_algorithms(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, clock: ManualClock
) -> None:
    """A server that offers AES-CBC and HMAC-SHA1 alone gets nothing until the operator
    sets that partner to legacy algorithms; then the package arrives, once."""
    home, pgp, server = exchange
    server.stop()
    server.extra_config = ["Ciphers aes128-cbc", "MACs hmac-sha1"]
    server.start()
    (short_tmp / "n.xml").write_bytes(b"notice for an old server")
    pid = send(home, short_tmp / "n.xml", clock=clock)

    run_once(home, clock)

    waiting = package(home, pid)
    assert waiting.state is State.SEALED and remote_files(server) == []
    assert "--ssh-algorithms legacy" in str(waiting.last_error)
    result = cli(home, "partner", "set", PARTNER_ID, "--ssh-algorithms", "legacy",
                 "--reason", "their server offers CBC only until its upgrade")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(cli(home, "partner", "show", PARTNER_ID, "--json").stdout)["ssh_algorithms"] == "legacy"  # fmt: skip
    retry_due(home, pid, clock)
    run_once(home, clock)

    assert state(home, pid) is State.DELIVERED
    assert remote_files(server) == [f"{pid}.pgp"]
    assert b"notice for an old server" in pgp.decrypt(server.upload / f"{pid}.pgp")[0]
    changed = [e for e in events(home) if e.action == "partner.ssh_algorithms"]
    assert [(e.partner, json.loads(e.detail or "{}")["legacy"]) for e in changed] == [
        (PARTNER_ID, True)
    ]


def test_the_session_with_openssh_is_aes256_gcm(
    exchange: tuple[Home, PartnerPgp, SshServer],
) -> None:
    """The client offers AEAD first and ETM MACs first; OpenSSH's sshd takes aes256-gcm."""
    home, _, server = exchange
    endpoint = Endpoint(server.host, server.port, server.user, "upload", "download")
    with SftpPartner(endpoint, load_key(home.ssh_identity, None), home.known_hosts, 15, 60) as sftp:
        assert sftp.list_download() == []
        transport = sftp.sftp.get_channel().get_transport()
        offered = transport.get_security_options()
        assert offered.ciphers[:2] == ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com")
        assert all(mac.endswith("-etm@openssh.com") for mac in offered.digests[:2])
        negotiated = (transport.local_cipher, transport.remote_cipher)
    assert negotiated == ("aes256-gcm@openssh.com", "aes256-gcm@openssh.com")


class Reversed:
    """Hands the client the answers to all its requests in flight in the reverse of the
    order the server sent them (SFTP lets a server answer in any order; OpenSSH keeps it)."""

    def __init__(self, sftp: Any) -> None:
        self.sftp, self.read = sftp, sftp._read_packet
        self.held: list[tuple[int, bytes]] = []
        self.reordered = 0

    def __call__(self) -> tuple[int, bytes]:
        if not self.held:
            self.held = [self.read() for _ in range(len(self.sftp._expecting))]
            self.reordered += len(self.held) > 1
        return self.held.pop()


def test_uploads_in_flight_together_take_answers_in_any_order(
    exchange: tuple[Home, PartnerPgp, SshServer], tmp_path: Path
) -> None:
    """Small files go up with each step's requests in flight at once; answers that come
    back in another order still reach the request they answer: each file whole, in place."""
    home, _, server = exchange
    datas = [os.urandom(n) for n in (0, 10, 4000, 5000, 60_000)]
    files = []
    for i, data in enumerate(datas):
        (tmp_path / f"f{i}").write_bytes(data)
        files.append(Outgoing(tmp_path / f"f{i}", f"f{i}.pgp", hashlib.sha256(data).hexdigest()))
    (server.upload / "f3.pgp").write_bytes(datas[3])  # one is there already
    endpoint = Endpoint(server.host, server.port, server.user, "upload", "download")
    with SftpPartner(endpoint, load_key(home.ssh_identity, None), home.known_hosts, 15, 60) as sftp:
        sftp.write_bytes()
        answers = Reversed(sftp.sftp)
        sftp.sftp._read_packet = answers  # type: ignore[method-assign]
        outcomes = sftp.put_all(files)
    assert answers.reordered >= 4, "each step's answers came back reversed"
    assert outcomes == [Placed(f"upload/f{i}.pgp", already_there=i == 3) for i in range(5)]
    assert remote_files(server) == [f"f{i}.pgp" for i in range(5)]
    assert [(server.upload / f"f{i}.pgp").read_bytes() for i in range(5)] == datas


def test_while_seals_are_in_flight_a_partners_turn_gathers_its_packages(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, clock: ManualClock
) -> None:
    """While seals are still running, a partner's turn waits until GATHER of its packages
    are sealed or the oldest has waited GATHER_SECONDS, so a burst goes up together; with
    no seal running, one sealed package has its turn at once."""
    home, _, server = exchange
    for n in range(GATHER + 1):
        (short_tmp / f"n{n}.xml").write_bytes(b"<n>%d</n>" % n)
        send(home, short_tmp / f"n{n}.xml", clock=clock)
    turn, in_flight = f"partner:{PARTNER_ID}", {"a seal in flight"}
    with gateway(home, "daemon", clock) as gw:
        scheduler = gw.scheduler(once=False)

        def turns(busy: set[str]) -> list[str]:
            return [key for key, _ in scheduler.due(busy, room=0)]

        assert turns(set()) == [turn], "its first poll"
        assert turns(in_flight) == [], "nothing sealed yet"
        received = gw.ledger.due(DUE_TO_SEAL, clock.now())
        for package in received[: GATHER - 1]:
            gw.steps.seal(package)
        assert turns(in_flight) == [], "fewer than GATHER sealed, the oldest just now"
        assert turns(set()) == [turn], "no seal running: no reason to wait"
        gw.steps.seal(received[GATHER - 1])
        assert turns(in_flight) == [turn], "GATHER sealed"
        for _, job in scheduler.due(in_flight, room=0):
            job()
        assert len(remote_files(server)) == GATHER

        gw.steps.seal(received[GATHER])
        clock.advance(GATHER_SECONDS - 0.01)
        assert turns(in_flight) == []
        clock.advance(0.01)
        assert turns(in_flight) == [turn], "the oldest has waited GATHER_SECONDS"


def test_a_server_that_answers_requests_never_made_is_cut_off(
    exchange: tuple[Home, PartnerPgp, SshServer], tmp_path: Path
) -> None:
    """A hostile server that floods the client with answers to requests it never made
    cannot hold a turn: the upload fails as a transfer failure, for every file."""
    home, _, server = exchange
    files = []
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(b"x" * 100)
        files.append(
            Outgoing(tmp_path / f"f{i}", f"f{i}.pgp", hashlib.sha256(b"x" * 100).hexdigest())
        )

    def flood() -> tuple[int, bytes]:
        answer = paramiko.Message()
        for field in (999_999, SFTP_OK):
            answer.add_int(field)
        answer.add_string("")
        answer.add_string("")
        return CMD_STATUS, answer.asbytes()

    endpoint = Endpoint(server.host, server.port, server.user, "upload", "download")
    with SftpPartner(endpoint, load_key(home.ssh_identity, None), home.known_hosts, 15, 60) as sftp:
        sftp.write_bytes()
        sftp.sftp._read_packet = flood  # type: ignore[method-assign]
        outcomes = sftp.put_all(files)
    assert [type(o) for o in outcomes] == [TransferFailed] * 3
    assert "answered requests that were not made" in str(outcomes[0])
    assert remote_files(server) == []
