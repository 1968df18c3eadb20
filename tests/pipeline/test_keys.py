"""Keys over time, end to end: expiry, partner key rotation and its overlap, own key rotation,
disabling a partner, and `gateway doctor`.

The gateway GB-ACRO pushes to US-NCB on a real sshd; a second partner, FR-CJN, is
registered on the same server with a real key that expires minutes after it is made
(`gpg --quick-gen-key ... seconds=N`). The gateway judges expiry by its clock: the expiry
tests run every command on a clock they move past the key's expiry instead of waiting.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from gateway.adapters.home import Home
from gateway.app.gateway import actor
from gateway.core.clock import Clock
from gateway.core.lifecycle import State
from gateway.core.model import Package
from gateway.core.names import new_ulid
from tests.helpers import (
    GATEWAY_ID,
    PARTNER_ID,
    TEST_REGIMES,
    ManualClock,
    PartnerPgp,
    Templates,
    cli,
    gateway,
    remote_files,
    run_once,
    seal_due,
    set_setting,
    state,
)
from tests.sshd import SshServer

SHORT_ID = "FR-CJN"
#: Seconds a short-lived key lives: time to register it and seal once (gpg, on the real
#: clock, encrypts only to a key it finds valid), with room to spare on a loaded machine.
LIFETIME = 300


# -- helpers ------------------------------------------------------------------------------


def add_short_lived(
    home: Home, server: SshServer, tmp: Path, clock: Clock, seconds: int = LIFETIME
) -> PartnerPgp:
    """Register FR-CJN, with a key that expires in `seconds`, as a push partner on `server`."""
    pgp = PartnerPgp(tmp / "fr-old", SHORT_ID, expire=f"seconds={seconds}")
    added = cli(home, "partner", "add", SHORT_ID, "--openpgp-key", str(pgp.public_key),
                "--fingerprint", pgp.fingerprint, "--push", server.url,
                "--host-key", server.host_key_line, *TEST_REGIMES, "--reason", "short-lived key",
                clock=clock)  # fmt: skip
    assert added.exit_code == 0, added.stderr
    pgp.trust_gateway(cli(home, "keys", "export", "--openpgp", clock=clock).stdout)
    return pgp


def move_past_expiry(home: Home, fingerprint: str, clock: ManualClock) -> None:
    """Move the clock past the key's expiry: the gateway's keyring sees it expired."""
    with gateway(home, clock=clock) as gw:
        expires = gw.keyring.key(fingerprint).expires
    assert expires is not None
    clock.set(max(clock.now(), expires) + 1.5)
    with gateway(home, clock=clock) as gw:
        assert gw.keyring.key(fingerprint).problem() == "the key has expired"


def send_to(
    home: Home, tmp: Path, to: str, name: str = "notice.xml", clock: Clock | None = None
) -> str:
    """`gateway send` a small file to partner `to`; the package id."""
    source = tmp / name
    source.write_bytes(f"<conviction for='{to}'/>".encode())
    result = cli(home, "send", str(source), "--to", to, "--kind", "conviction", clock=clock)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def package(home: Home, pid: str) -> Package:
    """One package's ledger row."""
    with gateway(home) as gw:
        return gw.ledger.package(pid)


def events(home: Home, action: str) -> list[Any]:
    """Every event with this action."""
    with gateway(home) as gw:
        return [e for e in gw.ledger.events() if e.action == action]


def ok(home: Home, *args: str, clock: Clock | None = None) -> str:
    """Run a command that must succeed; its stdout."""
    result = cli(home, *args, clock=clock)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def opens_with(pgp: PartnerPgp, path: Path) -> bool:
    """Whether this keyring can decrypt the file at all."""
    done = pgp.gpg("--status-fd", "2", "--decrypt", str(path), check=False)
    return done.returncode == 0 and b"DECRYPTION_OKAY" in done.stderr


def receipt(pgp: PartnerPgp, pid: str, digest: str) -> bytes:
    """A receipt for our package, clearsigned by `pgp` as a partner with plain gpg does it."""
    doc = {"schema": "gateway-receipt/1", "package_id": pid, "from": PARTNER_ID,
           "to": GATEWAY_ID, "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "ciphertext_sha256": digest, "disposition": "accepted"}  # fmt: skip
    return pgp.gpg("--local-user", pgp.fingerprint, "--clearsign", "--output", "-",
                   input=json.dumps(doc).encode()).stdout  # fmt: skip


def delivered(home: Home, server: SshServer, tmp: Path, name: str) -> tuple[str, str]:
    """Send to US-NCB and deliver; the package id and the sha256 of its .pgp."""
    pid = send_to(home, tmp, PARTNER_ID, name)
    run_once(home)
    assert state(home, pid) is State.DELIVERED
    return pid, hashlib.sha256((server.upload / f"{pid}.pgp").read_bytes()).hexdigest()


def partner_package(pgp: PartnerPgp, pid: str, recipient_key: str, payload: bytes) -> bytes:
    """A package from US-NCB to us, built with tarfile and plain gpg, encrypted to `recipient_key`."""
    doc = {"schema": "gateway-envelope/1", "package_id": pid, "kind": "response",
           "sender": {"id": PARTNER_ID, "key": pgp.fingerprint},
           "recipient": {"id": GATEWAY_ID, "key": recipient_key},
           "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "payload": {"name": "response.xml", "size": len(payload),
                       "sha256": hashlib.sha256(payload).hexdigest()}}  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in (("manifest.json", json.dumps(doc).encode()),
                           ("payload/response.xml", payload)):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            archive.addfile(info, io.BytesIO(data))
    return pgp.gpg("--local-user", pgp.fingerprint, "--recipient", recipient_key,
                   "--trust-model", "always", "--compress-algo", "none", "--cipher-algo", "AES256",
                   "--digest-algo", "SHA256", "--sign", "--encrypt", "--output", "-",
                   input=out.getvalue()).stdout  # fmt: skip


def doctor(home: Home, *args: str) -> tuple[int, list[str]]:
    """`gateway doctor ARGS`: exit status and output lines.

    ledger.db is first set to 0600, as `gateway init` leaves it under the CLI's umask: the
    `home` fixture copies a template made by `keys.init` under the test process's umask,
    which is 022 unless an earlier in-process `cli()` call left the CLI's 077 behind.
    """
    os.chmod(home.ledger, 0o600)
    result = cli(home, "doctor", *args)
    return result.exit_code, result.stdout.splitlines()


# -- partner key expiry -------------------------------------------------------------------


def test_expired_partner_key_holds_then_rotation_delivers_to_the_new_key(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, clock: ManualClock
) -> None:
    """Warned before expiry, held after it (nothing sent), delivered to the new key after rotate-key."""
    home, _, server = exchange
    old = add_short_lived(home, server, short_tmp, clock)

    shown = cli(home, "status", "--json", clock=clock)
    assert shown.exit_code == 1, "a key warning needs attention"
    status = json.loads(shown.stdout)
    assert any(SHORT_ID in w and old.fingerprint in w and "expires" in w
               for w in status["warnings"]), status["warnings"]  # fmt: skip
    assert not any(PARTNER_ID in w for w in status["warnings"])

    move_past_expiry(home, old.fingerprint, clock)
    pid = send_to(home, short_tmp, SHORT_ID, clock=clock)
    run_once(home, clock)

    held = package(home, pid)
    assert held.state is State.HELD
    assert "expired" in str(held.last_error), held.last_error
    assert remote_files(server) == [], "nothing went to the server"
    status = json.loads(cli(home, "status", "--json", clock=clock).stdout)
    assert any(SHORT_ID in w and "expired" in w for w in status["warnings"]), status["warnings"]

    new = PartnerPgp(short_tmp / "fr-new", SHORT_ID)
    try:
        new.trust_gateway(cli(home, "keys", "export", "--openpgp", clock=clock).stdout)
        ok(home, "partner", "rotate-key", SHORT_ID, "--openpgp-key", str(new.public_key),
           "--fingerprint", new.fingerprint, "--reason", "expired key replaced",
           clock=clock)  # fmt: skip
        ok(home, "retry", pid, "--reason", "partner key rotated", clock=clock)
        run_once(home, clock)

        assert state(home, pid) is State.DELIVERED
        assert remote_files(server) == [f"{pid}.pgp"]
        wire = server.upload / f"{pid}.pgp"
        plaintext, _ = new.decrypt(wire)
        with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest["recipient"] == {"id": SHORT_ID, "key": new.fingerprint}
        assert not opens_with(old, wire), "the old key cannot open it"
        assert package(home, pid).recipient_key == new.fingerprint
    finally:
        new.close()
        old.close()


def test_sealed_package_whose_key_expires_before_delivery_is_held_never_sent(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, clock: ManualClock
) -> None:
    """Sealed while the key was good (server down); after expiry it is held, not pushed."""
    home, _, server = exchange
    set_setting(home, "retry.first_delay_seconds", 1)
    set_setting(home, "retry.max_delay_seconds", 1)
    old = add_short_lived(home, server, short_tmp, clock)
    try:
        server.stop()
        pid = send_to(home, short_tmp, SHORT_ID, clock=clock)
        run_once(home, clock)
        sealed = package(home, pid)
        assert sealed.state is State.SEALED, sealed.last_error
        assert sealed.recipient_key == old.fingerprint and sealed.failures == 1

        move_past_expiry(home, old.fingerprint, clock)
        server.start()
        run_once(home, clock)

        held = package(home, pid)
        assert held.state is State.HELD
        assert "expired" in str(held.last_error), held.last_error
        assert remote_files(server) == [], "the sealed file was never pushed"
        assert [e.state for e in events(home, "hold")] == ["held"]
    finally:
        old.close()


# -- partner key rotation: the overlap window ---------------------------------------------


def test_receipt_signed_by_the_old_key_within_and_after_the_overlap(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """After rotate-key the old key's receipt is accepted; with keys.overlap_days 0 it is quarantined."""
    home, old, server = exchange
    first, first_digest = delivered(home, server, short_tmp, "a.xml")
    second, second_digest = delivered(home, server, short_tmp, "b.xml")
    new = PartnerPgp(short_tmp / "us-new", PARTNER_ID)
    try:
        ok(home, "partner", "rotate-key", PARTNER_ID, "--openpgp-key", str(new.public_key),
           "--fingerprint", new.fingerprint, "--reason", "annual rotation")  # fmt: skip

        (server.download / f"{first}.receipt").write_bytes(receipt(old, first, first_digest))
        run_once(home)
        assert state(home, first) is State.ACKNOWLEDGED
        [closing] = [e for e in events(home, "receipt") if e.package_id == first]
        assert json.loads(str(closing.detail))["signer"] == old.fingerprint

        set_setting(home, "keys.overlap_days", 0)
        stale = receipt(old, second, second_digest)
        (server.download / f"{second}.receipt").write_bytes(stale)
        run_once(home)

        assert state(home, second) is State.DELIVERED
        [refused] = [e for e in events(home, "receipt.quarantined") if e.package_id == second]
        reports = [json.loads(p.read_text()) for p in home.quarantine.glob("*.reason.json")]
        assert [r["original_name"] for r in reports] == [f"{second}.receipt"]
        assert (home.quarantine / reports[0]["id"]).read_bytes() == stale
        assert not (server.download / f"{second}.receipt").exists()

        (server.download / f"{second}.receipt").write_bytes(receipt(new, second, second_digest))
        run_once(home)
        assert state(home, second) is State.ACKNOWLEDGED, "the new key's receipt is accepted"
        assert refused.partner == PARTNER_ID
    finally:
        new.close()


# -- the gateway's own key ----------------------------------------------------------------


def test_own_key_rotation_signs_with_the_new_key_and_still_opens_the_old(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """After `keys rotate` packages are signed by the new key; packages to the old key still open."""
    home, pgp, server = exchange
    old = json.loads(ok(home, "keys", "show", "--json"))["openpgp"]["fingerprint"]
    ok(home, "audit", "checkpoint")  # signed by the old key

    out = ok(home, "keys", "rotate", "--reason", "annual rotation")

    new = json.loads(ok(home, "keys", "show", "--json"))["openpgp"]["fingerprint"]
    assert new != old and new in out
    [created] = [e for e in events(home, "key.create") if new in str(e.detail)]
    assert json.loads(str(created.detail))["reason"] == "annual rotation"
    assert json.loads(str(created.detail))["previous"] == old
    assert created.actor == actor()

    pid = send_to(home, short_tmp, PARTNER_ID)
    run_once(home)
    assert state(home, pid) is State.DELIVERED
    pgp.trust_gateway(ok(home, "keys", "export", "--openpgp"))
    plaintext, status = pgp.decrypt(server.upload / f"{pid}.pgp")
    assert any(line.startswith(f"VALIDSIG {new} ") for line in status), status
    assert not any(line.startswith(f"VALIDSIG {old} ") for line in status)
    with tarfile.open(fileobj=io.BytesIO(plaintext)) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    assert manifest["sender"] == {"id": GATEWAY_ID, "key": new}

    inbound = f"{PARTNER_ID}-{new_ulid(time.time())}"
    payload = b"<response>addressed to the old key</response>\n"
    (server.download / f"{inbound}.pgp").write_bytes(partner_package(pgp, inbound, old, payload))
    run_once(home)

    accepted = package(home, inbound)
    assert accepted.state is State.ACCEPTED, accepted.last_error
    assert accepted.recipient_key == old
    assert (home.inbound / PARTNER_ID / inbound / "response.xml").read_bytes() == payload
    verified = cli(home, "audit", "verify")
    assert verified.exit_code == 0, verified.stderr
    assert "1 signed checkpoints" in verified.stdout, "a checkpoint by the old key still verifies"


# -- disabling a partner ------------------------------------------------------------------


def test_disabled_partner_holds_packages_until_enabled_and_retried(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """Disable: held, nothing on the server, health disabled. Enable + retry: delivered. Audited."""
    home, _, server = exchange
    ok(home, "partner", "disable", PARTNER_ID, "--reason", "partner reports a breach")
    pid = send_to(home, short_tmp, PARTNER_ID)

    run_once(home)

    held = package(home, pid)
    assert held.state is State.HELD
    assert "disabled" in str(held.last_error)
    assert remote_files(server) == []
    shown = json.loads(ok(home, "partner", "show", PARTNER_ID, "--json"))
    assert shown["health"] == "disabled" and shown["enabled"] is False

    ok(home, "partner", "enable", PARTNER_ID, "--reason", "breach contained")
    ok(home, "retry", pid, "--reason", "partner enabled again")
    run_once(home)

    assert state(home, pid) is State.DELIVERED
    assert remote_files(server) == [f"{pid}.pgp"]
    assert json.loads(ok(home, "partner", "show", PARTNER_ID, "--json"))["health"] == "ok"
    for action, why in (("partner.disable", "partner reports a breach"),
                        ("partner.enable", "breach contained")):  # fmt: skip
        [event] = events(home, action)
        assert event.partner == PARTNER_ID and event.actor == actor()
        assert json.loads(str(event.detail)) == {"reason": why}


def test_disabling_holds_a_package_already_sealed(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """A package sealed before the partner was disabled is held at delivery, not pushed."""
    home, _, server = exchange
    server.stop()
    pid = send_to(home, short_tmp, PARTNER_ID)
    run_once(home)
    assert state(home, pid) is State.SEALED
    server.start()
    ok(home, "partner", "disable", PARTNER_ID, "--reason", "partner reports a breach")
    ok(home, "retry", pid, "--reason", "try now")  # due at once, not after the backoff

    run_once(home)

    held = package(home, pid)
    assert held.state is State.HELD and "disabled" in str(held.last_error)
    assert remote_files(server) == []


def test_disabling_a_pull_partner_holds_a_package_already_sealed(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path, templates: Templates
) -> None:
    """A pull partner's sealed package waits as held once it is disabled, as a push partner's does."""
    home, _, server = exchange
    pull = templates.partner(short_tmp / "au", "AU-AFP")
    try:
        ok(home, "partner", "add", "AU-AFP", "--openpgp-key", str(pull.public_key),
           "--fingerprint", pull.fingerprint, "--pull", "--ssh-key",
           f"{server.client_key}.pub", *TEST_REGIMES, "--reason", "pull partner")  # fmt: skip
        pid = send_to(home, short_tmp, "AU-AFP")
        with gateway(home, "daemon") as gw:
            seal_due(gw)
        assert state(home, pid) is State.SEALED
        ok(home, "partner", "disable", "AU-AFP", "--reason", "partner reports a breach")

        run_once(home)

        assert list((home.mailbox / "AU-AFP" / "download").iterdir()) == [], "nothing published"
        held = package(home, pid)
        assert held.state is State.HELD, (
            f"{held.state}: packages of a disabled partner wait as held"
        )
        assert "disabled" in str(held.last_error)
    finally:
        pull.close()


# -- doctor -------------------------------------------------------------------------------


def test_doctor_passes_with_a_reachable_partner(
    exchange: tuple[Home, PartnerPgp, SshServer],
) -> None:
    """Exit 0; the partner is reachable with its host key as pinned; --json parses."""
    home = exchange[0]

    code, lines = doctor(home)

    assert code == 0, lines
    assert any(line.startswith("ok") and PARTNER_ID in line and "reachable" in line
               and "host key as pinned" in line for line in lines), lines  # fmt: skip
    assert not any(line.startswith("fail") for line in lines), lines
    found = json.loads(ok(home, "doctor", "--json"))  # after doctor(): ledger.db is 0600
    assert isinstance(found, list) and found
    assert {f["level"] for f in found} <= {"ok", "warn"}
    assert all(set(f) == {"level", "what", "todo"} for f in found)
    assert any(PARTNER_ID in f["what"] and "reachable" in f["what"] for f in found)


def test_doctor_fails_on_a_loose_keys_folder(exchange: tuple[Home, PartnerPgp, SshServer]) -> None:
    """keys/ at 0755: exit 1, with a line naming the path and the chmod that fixes it."""
    home = exchange[0]
    os.chmod(home.keys, 0o755)  # noqa: S103 - the fault doctor must find

    code, lines = doctor(home, "--offline")

    assert code == 1, lines
    [line] = [line for line in lines if line.startswith("fail")]
    assert str(home.keys) in line and f"chmod 700 {home.keys}" in line, line


def test_doctor_fails_when_the_partner_is_down_and_offline_reads_the_record(
    exchange: tuple[Home, PartnerPgp, SshServer],
) -> None:
    """Partner's sshd stopped: exit 1 naming it; --offline does not connect, and says the same."""
    home, _, server = exchange
    server.stop()

    code, lines = doctor(home)

    assert code == 1, lines
    failing = [line for line in lines if line.startswith("fail")]
    assert len(failing) == 1 and PARTNER_ID in failing[0], lines

    code, again = doctor(home, "--offline")

    # --offline connects to no one: it reports the partner's record as the first run left it
    assert code == 1, again
    assert [line for line in again if line.startswith("fail")] == failing
