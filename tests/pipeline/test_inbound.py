"""What a partner leaves for the gateway: receipts for its packages, and packages of its own.

The partner's side is played by plain `gpg` (and Python's `tarfile` for the tar), built
by hand as docs/partners.md shows; a second keyring, FR-CJN, is never pinned and plays a
forger. Each test asserts the end state: ledger state and events, spool/inbound,
quarantine entries with their reasons, and the files on the partner's server.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.core.errors import NoSuchPackage, Transient
from gateway.core.lifecycle import State
from gateway.core.model import Partner
from gateway.core.names import new_ulid
from gateway.pipeline.collect import Collector
from tests.helpers import (
    FORGER_ID,
    GATEWAY_ID,
    PARTNER_ID,
    PAYLOAD,
    PAYLOAD_NAME,
    Desk,
    ManualClock,
    actions,
    cli,
    delivered,
    envelope,
    events,
    gateway,
    leave,
    manifest,
    member,
    only_quarantined,
    open_our_receipt,
    package,
    partner_pid,
    quarantined,
    receipt_json,
    run_once,
    seal,
    set_setting,
    sha256,
    sign,
    state,
    tar,
)

# -- small helpers ------------------------------------------------------------------------


# -- built by hand (receipts, manifests, tars and sealing: tests.helpers) -----------------

FORMS = ("armor", "clearsign", "binary", "encrypted")


# -- receipts for the gateway's packages --------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_good_receipt_acknowledges_the_package(desk: Desk, form: str) -> None:
    pid, digest = delivered(desk)
    signed = sign(desk.pgp, receipt_json(pid, digest), form, desk.gateway_fpr)
    leave(desk, f"{pid}.receipt", signed)

    run_once(desk.home)

    assert state(desk.home, pid) is State.ACKNOWLEDGED
    assert (desk.home.receipts_in / f"{pid}.receipt").read_bytes() == signed, "evidence kept"
    assert not (desk.server.download / f"{pid}.receipt").exists(), "fetched, then removed"
    assert actions(desk.home, pid)[-1] == "receipt"
    assert quarantined(desk.home) == []


def test_rejected_receipt_refuses_the_package_with_its_reason(desk: Desk) -> None:
    pid, digest = delivered(desk)
    why = "payload schema ECRIS-NOT-2 is not supported here"
    doc = receipt_json(pid, digest, disposition="rejected", reason=why)
    leave(desk, f"{pid}.receipt", sign(desk.pgp, doc))

    run_once(desk.home)

    assert state(desk.home, pid) is State.REFUSED
    shown = cli(desk.home, "ledger", "show", pid, "--json")
    assert shown.exit_code == 0, shown.stderr
    assert why in json.loads(shown.stdout)["package"]["last_error"]
    assert not (desk.server.download / f"{pid}.receipt").exists()


def _unpinned(desk: Desk, pid: str, digest: str) -> bytes:
    return sign(desk.forger, receipt_json(pid, digest))


def _wrong_hash(desk: Desk, pid: str, digest: str) -> bytes:
    return sign(desk.pgp, receipt_json(pid, sha256(b"some other ciphertext")))


def _from_other(desk: Desk, pid: str, digest: str) -> bytes:
    return sign(desk.pgp, receipt_json(pid, digest, **{"from": FORGER_ID}))


def _malformed(desk: Desk, pid: str, digest: str) -> bytes:
    return sign(desk.pgp, b'{"schema": "gateway-receipt/1", "package_id": ')


def _unsigned(desk: Desk, pid: str, digest: str) -> bytes:
    return receipt_json(pid, digest)


BAD_RECEIPTS: dict[str, tuple[Callable[[Desk, str, str], bytes], str]] = {
    "signed by an unpinned key": (_unpinned, r"not pinned"),
    "wrong ciphertext_sha256": (_wrong_hash, r"ciphertext_sha256"),
    "from another partner": (_from_other, rf"from {FORGER_ID}"),
    "malformed JSON": (_malformed, r"not UTF-8 JSON"),
    "unsigned plain JSON": (_unsigned, r"no valid signature"),
}


@pytest.mark.parametrize("case", BAD_RECEIPTS)
def test_bad_receipt_is_quarantined_and_changes_nothing(desk: Desk, case: str) -> None:
    build, reason = BAD_RECEIPTS[case]
    pid, digest = delivered(desk)
    bad = build(desk, pid, digest)
    leave(desk, f"{pid}.receipt", bad)

    run_once(desk.home)

    assert state(desk.home, pid) is State.DELIVERED, "the package's state does not change"
    assert "receipt.quarantined" in actions(desk.home, pid)
    report, kept = only_quarantined(desk.home)
    assert re.search(reason, report["reason"]), report
    assert report["what_arrived"] == "receipt"
    assert report["original_name"] == f"{pid}.receipt"
    assert kept == bad
    assert not (desk.server.download / f"{pid}.receipt").exists(), "fetched, then removed"
    assert not (desk.home.receipts_in / f"{pid}.receipt").exists()


def test_receipt_for_an_unknown_package_is_quarantined(desk: Desk) -> None:
    pid, digest = delivered(desk)
    unknown = f"{GATEWAY_ID}-{new_ulid(time.time())}"
    bad = sign(desk.pgp, receipt_json(unknown, digest))
    leave(desk, f"{unknown}.receipt", bad)

    run_once(desk.home)

    assert state(desk.home, pid) is State.DELIVERED
    recorded = [e for e in events(desk.home) if e.action == "receipt.quarantined"]
    assert len(recorded) == 1 and f"{unknown}.receipt" in str(recorded[0].detail)
    report, kept = only_quarantined(desk.home)
    assert "no package of ours" in report["reason"] and kept == bad
    assert not (desk.server.download / f"{unknown}.receipt").exists()


def test_receipt_named_for_one_package_but_about_another_is_quarantined(desk: Desk) -> None:
    first, _ = delivered(desk, "a.xml")
    second, second_digest = delivered(desk, "b.xml")
    bad = sign(desk.pgp, receipt_json(second, second_digest))
    leave(desk, f"{first}.receipt", bad)

    run_once(desk.home)

    assert state(desk.home, first) is State.DELIVERED
    assert state(desk.home, second) is State.DELIVERED
    assert "receipt.quarantined" in actions(desk.home, first)
    report, kept = only_quarantined(desk.home)
    assert f"named for {first}" in report["reason"] and second in report["reason"]
    assert kept == bad
    assert not (desk.server.download / f"{first}.receipt").exists()


def test_the_same_receipt_twice_is_a_duplicate(desk: Desk) -> None:
    pid, digest = delivered(desk)
    signed = sign(desk.pgp, receipt_json(pid, digest))
    leave(desk, f"{pid}.receipt", signed)
    run_once(desk.home)
    assert state(desk.home, pid) is State.ACKNOWLEDGED

    leave(desk, f"{pid}.receipt", signed)
    run_once(desk.home)

    assert state(desk.home, pid) is State.ACKNOWLEDGED
    assert actions(desk.home, pid).count("receipt.duplicate") == 1
    assert actions(desk.home, pid).count("receipt") == 1
    assert quarantined(desk.home) == []
    assert (desk.home.receipts_in / f"{pid}.receipt").read_bytes() == signed
    assert not (desk.server.download / f"{pid}.receipt").exists()


def test_a_different_second_receipt_after_acknowledgement_is_quarantined(desk: Desk) -> None:
    pid, digest = delivered(desk)
    first = sign(desk.pgp, receipt_json(pid, digest, received_at="2026-01-01T00:00:00Z"))
    leave(desk, f"{pid}.receipt", first)
    run_once(desk.home)
    assert state(desk.home, pid) is State.ACKNOWLEDGED

    why = "changed our mind"
    second = sign(desk.pgp, receipt_json(pid, digest, disposition="rejected", reason=why))
    leave(desk, f"{pid}.receipt", second)
    run_once(desk.home)

    assert state(desk.home, pid) is State.ACKNOWLEDGED
    assert "receipt.quarantined" in actions(desk.home, pid)
    report, kept = only_quarantined(desk.home)
    assert "different content" in report["reason"] and kept == second
    assert (desk.home.receipts_in / f"{pid}.receipt").read_bytes() == first, "evidence kept"
    assert not (desk.server.download / f"{pid}.receipt").exists()


def test_overdue_lists_a_delivered_package_until_its_receipt(
    desk: Desk, clock: ManualClock
) -> None:
    set_setting(desk.home, "receipts.overdue_after_seconds", 1)
    pid, digest = delivered(desk, clock=clock)
    clock.advance(1.1)

    def overdue() -> list[str]:
        listed = cli(desk.home, "ledger", "list", "--state", "overdue", "--json", clock=clock)
        assert listed.exit_code == 0, listed.stderr
        return [row["package_id"] for row in json.loads(listed.stdout)]

    assert overdue() == [pid]
    leave(desk, f"{pid}.receipt", sign(desk.pgp, receipt_json(pid, digest)))
    run_once(desk.home, clock)
    assert state(desk.home, pid) is State.ACKNOWLEDGED
    assert overdue() == []


# -- packages from the partner ------------------------------------------------------------


@pytest.mark.parametrize("content", [PAYLOAD, os.urandom(3 * 1024 * 1024)], ids=["small", "3MiB"])
def test_good_package_is_delivered_and_receipted(desk: Desk, content: bytes) -> None:
    """A small file is read in one request, a large one read ahead: both arrive whole."""
    pid = partner_pid()
    doc = manifest(desk, pid, content, reference="US-CASE-7")
    wire = leave(desk, f"{pid}.pgp", seal(desk, envelope(doc, content))).read_bytes()

    run_once(desk.home)

    folder = desk.home.inbound / PARTNER_ID / pid
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", PAYLOAD_NAME])
    assert (folder / PAYLOAD_NAME).read_bytes() == content
    assert json.loads((folder / "manifest.json").read_bytes()) == doc
    row = package(desk.home, pid)
    assert row.state is State.ACCEPTED and row.direction == "in" and row.partner == PARTNER_ID
    assert (row.kind, row.payload_name, row.payload_size, row.payload_sha256) == (
        "response", PAYLOAD_NAME, len(content), sha256(content))  # fmt: skip
    assert row.reference == "US-CASE-7" and row.sender_key == desk.pgp.fingerprint
    assert row.ciphertext_sha256 == sha256(wire) and row.receipt_state == "sent"
    assert not (desk.server.download / f"{pid}.pgp").exists(), "fetched, then removed"
    assert quarantined(desk.home) == []

    receipt = open_our_receipt(desk, pid)
    assert receipt["disposition"] == "accepted" and "reason" not in receipt
    assert receipt["ciphertext_sha256"] == sha256(wire)
    assert (receipt["package_id"], receipt["from"], receipt["to"]) == (pid, GATEWAY_ID, PARTNER_ID)


def test_fetched_packages_are_handled_side_by_side_and_a_failure_loses_none(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handling runs on several threads; a file whose handling fails stays on the server
    while the others are removed once accepted, and the next poll finishes it, once."""
    pids = [partner_pid() for _ in range(10)]
    for pid in pids:
        leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid))))
    failing, handle, lock = pids[3], Collector.handle, threading.Lock()
    running, most = 0, 0

    def spy(collector: Collector, partner: Partner, path: Path) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            if path.name == f"{failing}.pgp":
                raise Transient("the ledger is busy (injected); try again")
            handle(collector, partner, path)
        finally:
            with lock:
                running -= 1

    with monkeypatch.context() as patched:
        patched.setattr(Collector, "handle", spy)
        run_once(desk.home)

    assert most > 1, "handled side by side"
    left = sorted(os.listdir(desk.server.download))
    assert f"{failing}.pgp" in left
    for pid in pids:
        if f"{pid}.pgp" not in left:
            assert package(desk.home, pid).state is State.ACCEPTED, "removed only once accepted"
    with gateway(desk.home) as gw, pytest.raises(NoSuchPackage):
        gw.ledger.package(failing)

    run_once(desk.home)

    assert os.listdir(desk.server.download) == []
    assert {package(desk.home, pid).state for pid in pids} == {State.ACCEPTED}
    assert sorted(os.listdir(desk.server.upload)) == sorted(f"{pid}.receipt" for pid in pids)
    assert [actions(desk.home, pid).count("accept") for pid in pids] == [1] * len(pids)


def test_receipt_upload_cut_before_it_was_recorded_is_finished_not_repeated(desk: Desk) -> None:
    """Receipts are recorded `sent` after their uploads, in one commit: a crash between is harmless."""
    pid = partner_pid()
    leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid))))
    run_once(desk.home)
    remote = desk.server.upload / f"{pid}.receipt"
    first = remote.stat()
    with gateway(desk.home) as gw:  # put the ledger back as it was before the crash
        gw.ledger.db["packages"].update(pid, {"receipt_state": "due"})

    run_once(desk.home)

    assert package(desk.home, pid).receipt_state == "sent"
    assert remote.stat().st_mtime_ns == first.st_mtime_ns, "the receipt was not written again"
    assert sorted(os.listdir(desk.server.upload)) == [f"{pid}.receipt"]
    assert actions(desk.home, pid).count("receipt.sent") == 2
    assert open_our_receipt(desk, pid)["disposition"] == "accepted"


def _tar_member_case(*members: Callable[[Desk, str], tuple[tarfile.TarInfo, bytes]]) -> Callable[[Desk, str], bytes]:  # fmt: skip
    """A case whose tar is manifest.json then `members`."""

    def build(desk: Desk, pid: str) -> bytes:
        head = member("manifest.json", json.dumps(manifest(desk, pid)).encode())
        return seal(desk, tar(head, *(m(desk, pid) for m in members)))

    return build


def _payload(desk: Desk, pid: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(f"payload/{PAYLOAD_NAME}", PAYLOAD)


def _plain(doc: Callable[[Desk, str], dict[str, Any]], **kw: Any) -> Callable[[Desk, str], bytes]:
    """A case that seals a correct tar of the manifest `doc` builds."""
    return lambda desk, pid: seal(desk, envelope(doc(desk, pid)), **kw)


# name -> (build the .pgp, reason pattern, whether the partner is authenticated: a rejected receipt)
BAD_PACKAGES: dict[str, tuple[Callable[[Desk, str], bytes], str, bool]] = {
    "addressed to another authority (forwarded)": (
        _plain(lambda d, p: manifest(d, p, recipient={"id": FORGER_ID, "key": d.forger.fingerprint})),
        rf"addressed to {FORGER_ID}", True),
    "addressed to us but another key": (
        _plain(lambda d, p: manifest(d, p, recipient={"id": GATEWAY_ID, "key": d.forger.fingerprint})),
        r"addressed to GB-ACRO with key [0-9A-F]{40}, not to this gateway", True),
    "signed by an unpinned key": (
        lambda d, p: seal(d, envelope(manifest(d, p)), signer=d.forger),
        r"not pinned", False),
    "payload hash wrong": (
        _plain(lambda d, p: manifest(d, p, payload={"name": PAYLOAD_NAME, "size": len(PAYLOAD),
                                                    "sha256": sha256(b"other")})),
        r"SHA-256", True),
    "payload size wrong": (
        _plain(lambda d, p: manifest(d, p, payload={"name": PAYLOAD_NAME, "size": len(PAYLOAD) + 1,
                                                    "sha256": sha256(PAYLOAD)})),
        r"size", True),
    "extra tar member": (
        _tar_member_case(_payload, lambda d, p: member("payload/extra.txt", b"more")),
        r"more than manifest.json and the payload", True),
    "member named ../x": (
        _tar_member_case(lambda d, p: member("../x", PAYLOAD)), r"second member", True),
    "absolute member": (
        _tar_member_case(lambda d, p: member("/tmp/x", PAYLOAD)), r"second member", True),
    "../x after the payload": (
        _tar_member_case(_payload, lambda d, p: member("../x", b"escape")),
        r"more than manifest.json", True),
    "symlink member": (
        _tar_member_case(lambda d, p: member(f"payload/{PAYLOAD_NAME}", b"/etc/passwd", tarfile.SYMTYPE)),
        r"second member", True),
    "sender not the partner": (
        _plain(lambda d, p: manifest(d, p, sender={"id": FORGER_ID, "key": d.pgp.fingerprint})),
        rf"sender is {FORGER_ID}", True),
    "package id not the file's": (
        _plain(lambda d, p: manifest(d, p, package_id=partner_pid())), rf"manifest is for {PARTNER_ID}-",
        True),
    "only signed, not encrypted": (
        _plain(manifest, encrypt=False), r"not encrypted", True),
    "gzip-compressed tar": (
        lambda d, p: seal(d, gzip.compress(envelope(manifest(d, p)))),
        r"not a valid uncompressed tar", True),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_PACKAGES)
def test_bad_package_is_rejected_and_quarantined(desk: Desk, case: str) -> None:
    build, reason, authenticated = BAD_PACKAGES[case]
    pid = partner_pid()
    wire = build(desk, pid)
    leave(desk, f"{pid}.pgp", wire)

    run_once(desk.home)

    row = package(desk.home, pid)
    assert row.state is State.REJECTED and row.direction == "in"
    assert row.last_error and re.search(reason, row.last_error), row.last_error
    assert not (desk.home.inbound / PARTNER_ID / pid).exists(), "nothing delivered"
    assert list((desk.home.inbound / PARTNER_ID).iterdir()) == []
    assert not (desk.home.work / "x").exists() and not (desk.home.spool / "x").exists()
    report, kept = only_quarantined(desk.home)
    assert re.search(reason, report["reason"]), report
    assert report["package_id"] == pid and kept == wire
    assert "reject" in actions(desk.home, pid)
    assert not (desk.server.download / f"{pid}.pgp").exists(), "fetched, then removed"

    if not authenticated:
        assert not (desk.server.upload / f"{pid}.receipt").exists(), "no receipt to a stranger"
        return
    receipt = open_our_receipt(desk, pid)
    assert receipt["disposition"] == "rejected"
    assert re.search(reason, receipt["reason"]), receipt
    assert receipt["ciphertext_sha256"] == sha256(wire)
    assert (receipt["package_id"], receipt["from"], receipt["to"]) == (pid, GATEWAY_ID, PARTNER_ID)


def test_replayed_package_is_not_delivered_twice(desk: Desk) -> None:
    pid = partner_pid()
    wire = seal(desk, envelope(manifest(desk, pid)))
    leave(desk, f"{pid}.pgp", wire)
    run_once(desk.home)
    assert state(desk.home, pid) is State.ACCEPTED
    (desk.server.upload / f"{pid}.receipt").unlink()  # the partner took its receipt
    folder = desk.home.inbound / PARTNER_ID
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))

    leave(desk, f"{pid}.pgp", wire)
    run_once(desk.home)

    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    with gateway(desk.home) as gw:
        assert [p.package_id for p in gw.ledger.packages(direction="in")] == [pid]
    assert state(desk.home, pid) is State.ACCEPTED
    assert actions(desk.home, pid).count("replay") == 1
    assert actions(desk.home, pid).count("accept") == 1
    assert not (desk.server.download / f"{pid}.pgp").exists()
    assert open_our_receipt(desk, pid)["disposition"] == "accepted", "the receipt is sent again"


@pytest.mark.parametrize(
    "name", ["notes.txt", "US-NCB-bad.pgp", f".{PARTNER_ID}-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M.pgp.part"]
)
def test_file_named_outside_the_contract_is_left_alone(desk: Desk, name: str) -> None:
    run_once(desk.home)  # settle whatever a first pass records
    before = events(desk.home)
    path = leave(desk, name, b"not for the gateway")

    run_once(desk.home)

    assert path.read_bytes() == b"not for the gateway", "left on the server"
    assert events(desk.home) == before, "nothing recorded"
    assert quarantined(desk.home) == []
    with gateway(desk.home) as gw:
        assert gw.ledger.packages(direction="in") == []
    assert list((desk.home.incoming / PARTNER_ID).iterdir()) == []


def test_receipt_signed_by_sequoia_is_accepted(desk: Desk, short_tmp: Path) -> None:
    """`sq` puts a binary salt notation on every signature; the partner's pinned key, used
    through Sequoia instead of GnuPG, must still be recognised."""
    pid, digest = delivered(desk)
    secret = short_tmp / "partner-secret.pgp"
    secret.write_bytes(desk.pgp.gpg("--export-secret-keys", desk.pgp.fingerprint).stdout)
    body = short_tmp / "receipt.json"
    body.write_bytes(receipt_json(pid, digest))
    signed = subprocess.run(["sq", "sign", "--signer-key", str(secret), str(body)],
                            capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    leave(desk, f"{pid}.receipt", signed)

    run_once(desk.home)

    assert package(desk.home, pid).state is State.ACKNOWLEDGED
    assert quarantined(desk.home) == []


def test_a_partners_escape_sequences_are_shown_escaped_and_kept_exact_in_json(
    desk: Desk, capsys: pytest.CaptureFixture[str]
) -> None:
    """A receipt's reason with a terminal escape, a bidi override and a forged line."""
    pid, digest = delivered(desk)
    why = "no\x1b[2J\u202e\nerror: forged line"
    leave(desk, f"{pid}.receipt", sign(desk.pgp, receipt_json(pid, digest, disposition="rejected", reason=why)))  # fmt: skip

    run_once(desk.home)

    for args in (("ledger", "show", pid), ("ledger", "list")):
        text = cli(desk.home, *args).stdout
        assert "\x1b" not in text and "\u202e" not in text, args
        assert "\\x1b[2J\\u202e\\x0aerror: forged line" in text, args
        assert not any(line.startswith("error: forged") for line in text.splitlines())
    exact = json.loads(cli(desk.home, "ledger", "show", pid, "--json").stdout)
    assert exact["package"]["last_error"] == f"refused by {PARTNER_ID}: {why}"


def on_a_terminal(home: Path, *args: str) -> bytes:
    """The bytes `gateway --home HOME ARGS` writes to a real terminal (a pty)."""
    main, child = os.openpty()
    try:
        with subprocess.Popen([sys.executable, "-m", "gateway", "--home", str(home), *args],
                              stdin=child, stdout=child, stderr=child) as process:  # fmt: skip
            os.close(child)
            out = b""
            while True:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the command ended and its terminal closed
                    break
                if not chunk:
                    break
                out += chunk
            assert process.wait(30) == 0, out
    finally:
        os.close(main)
    return out


def test_every_partner_field_reaches_a_terminal_escaped(desk: Desk) -> None:
    """A package whose manifest text fields and a receipt whose reason carry a terminal
    title sequence, a screen clear and a bidi override: on a real terminal, `ledger list`,
    `ledger show` and `status` print them escaped, never the raw control bytes."""
    evil = "a\x1b]0;pwned\x07\x1b[2J\u202eb\rforged"
    pid = partner_pid()
    doc = manifest(desk, pid, reference=f"ref-{evil}", legal_basis=f"basis-{evil}",
                   marking=f"mark-{evil}")  # fmt: skip
    leave(desk, f"{pid}.pgp", seal(desk, envelope(doc)))
    ours, digest = delivered(desk)
    leave(desk, f"{ours}.receipt", sign(desk.pgp, receipt_json(ours, digest, disposition="rejected", reason=f"why-{evil}")))  # fmt: skip

    run_once(desk.home)

    assert package(desk.home, pid).state is State.ACCEPTED
    shown = b"".join(on_a_terminal(desk.home.root, *args) for args in
                     (("ledger", "list"), ("ledger", "show", pid), ("ledger", "show", ours),
                      ("status",)))  # fmt: skip
    assert b"\x1b" not in shown and b"\x07" not in shown
    assert "\u202e".encode() not in shown
    assert b"\rforged" not in shown
    escaped = b"a\\x1b]0;pwned\\x07\\x1b[2J\\u202eb\\x0dforged"
    for field in (b"ref-", b"basis-", b"mark-", b"why-"):
        assert field + escaped in shown, field
