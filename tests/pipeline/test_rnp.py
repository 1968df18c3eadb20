"""Partners using RNP (the `rnp` command line of Debian 12, 0.16) instead of GnuPG.

The commands of docs/partners.md section 8 run as written: the partner's own key,
exported from its gpg keyring, goes into an RNP keyring with the gateway's public key;
RNP opens and verifies our package, signs its receipt, signs and encrypts a package to
the gateway, and opens our receipt for it. The gateway's side is the real thing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    GATEWAY_ID,
    PARTNER_ID,
    PAYLOAD,
    PAYLOAD_NAME,
    TEST_REGIMES,
    Desk,
    PartnerPgp,
    actions,
    cli,
    envelope,
    gateway,
    leave,
    manifest,
    package,
    partner_pid,
    quarantined,
    receipt_json,
    run_once,
    send,
    sha256,
)
from tests.sshd import SshServer


@pytest.fixture
def shown(home: Home, partner_pgp: PartnerPgp, server: SshServer, short_tmp: Path) -> Desk:
    """The partner's desk, registered with `--show-recipient`: RNP 0.16 cannot find its
    key for a message whose recipient key id is hidden (the gateway's default)."""
    added = cli(home, "partner", "add", PARTNER_ID, "--openpgp-key", str(partner_pgp.public_key),
                "--fingerprint", partner_pgp.fingerprint, "--push", server.url,
                "--host-key", server.host_key_line, "--show-recipient",
                *TEST_REGIMES, "--reason", "partner reads with RNP")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    server.authorize(home.ssh_identity_pub.read_text())
    with gateway(home) as gw:
        fpr = gw.own_key
    partner_pgp.trust_gateway(cli(home, "keys", "export", "--openpgp").stdout)
    partner_pgp.gpg("--quick-lsign-key", fpr)
    return Desk(home, partner_pgp, partner_pgp, server, fpr, short_tmp)


GUIDE = Path(__file__).resolve().parents[2] / "docs" / "partners.md"


def blocks(section: str) -> list[str]:
    """The shell code blocks of one numbered section of the partner guide."""
    text = GUIDE.read_text()
    start = text.index(f"\n## {section}.")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.S)


def run(script: str, cwd: Path, env: dict[str, str]) -> None:
    """Run the commands in bash as the partner would, stopping at the first failure."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, f"guide commands failed:\n{script}\n--- stderr:\n{done.stderr}"


def test_the_rnp_commands_of_the_partner_guide_work_both_ways(shown: Desk) -> None:
    home, server, desk = shown.home, shown.server, shown.tmp / "desk"
    desk.mkdir()
    setup, read_and_answer, seal_one, read_receipt = blocks("8")
    (desk / "my-secret-key.asc").write_bytes(
        shown.pgp.gpg("--export-secret-keys", "--armor", shown.pgp.fingerprint).stdout
    )
    (desk / f"{GATEWAY_ID}.asc").write_text(cli(home, "keys", "export", "--openpgp").stdout)
    env = {**os.environ, "GATEWAY_FPR": shown.gateway_fpr, "MY_FPR": shown.pgp.fingerprint}
    run(setup, desk, env)

    # Our package, opened with RNP; its receipt signed with RNP.
    payload = b"<conviction>read with RNP</conviction>\n"
    (shown.tmp / "n.xml").write_bytes(payload)
    pid = send(home, shown.tmp / "n.xml")
    run_once(home)
    wire = (server.upload / f"{pid}.pgp").read_bytes()
    (desk / f"{pid}.pgp").write_bytes(wire)
    (desk / "receipt.json").write_bytes(receipt_json(pid, sha256(wire)))
    run(read_and_answer, desk, {**env, "PACKAGE": f"{pid}.pgp", "PACKAGE_ID": pid})
    with tarfile.open(desk / "envelope.tar") as tar:
        assert tar.getnames() == ["manifest.json", "payload/n.xml"]
        doc = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert tar.extractfile("payload/n.xml").read() == payload  # type: ignore[union-attr]
    assert doc["recipient"] == {"id": PARTNER_ID, "key": shown.pgp.fingerprint}
    shutil.copy(desk / f"{pid}.receipt", server.download)
    run_once(home)
    assert package(home, pid).state is State.ACKNOWLEDGED
    assert actions(home, pid).count("receipt") == 1

    # A package sealed with RNP, accepted; our receipt for it, opened with RNP.
    sent = partner_pid()
    (desk / "envelope-out.tar").write_bytes(envelope(manifest(shown, sent)))
    run(seal_one, desk, {**env, "SENT_ID": sent})
    theirs = (desk / f"{sent}.pgp").read_bytes()
    leave(shown, f"{sent}.pgp", theirs)
    run_once(home)
    assert package(home, sent).state is State.ACCEPTED
    assert (home.inbound / PARTNER_ID / sent / PAYLOAD_NAME).read_bytes() == PAYLOAD
    shutil.copy(server.upload / f"{sent}.receipt", desk)
    run(read_receipt, desk, {**env, "SENT_ID": sent})
    receipt = json.loads((desk / "receipt-back.json").read_bytes())
    assert (receipt["package_id"], receipt["disposition"]) == (sent, "accepted")
    assert receipt["ciphertext_sha256"] == sha256(theirs)
    assert quarantined(home) == []


def test_the_guides_signature_check_fails_for_a_receipt_the_gateway_did_not_sign(
    shown: Desk,
) -> None:
    """The `grep` after `--decrypt` is what tells a forged file: it must be able to fail."""
    desk = shown.tmp / "desk"
    desk.mkdir()
    setup, read_and_answer, _, _ = blocks("8")
    (desk / "my-secret-key.asc").write_bytes(
        shown.pgp.gpg("--export-secret-keys", "--armor", shown.pgp.fingerprint).stdout
    )
    (desk / f"{GATEWAY_ID}.asc").write_text(cli(shown.home, "keys", "export", "--openpgp").stdout)
    env = {**os.environ, "GATEWAY_FPR": shown.gateway_fpr, "MY_FPR": shown.pgp.fingerprint}
    run(setup, desk, env)
    forged = shown.pgp.gpg("--local-user", shown.pgp.fingerprint, "--recipient",
                           shown.pgp.fingerprint, "--sign", "--encrypt", "--output", "-",
                           input=b"not from the gateway").stdout  # fmt: skip
    (desk / "forged.pgp").write_bytes(forged)
    check = read_and_answer.splitlines()[:2]  # decrypt, then the signer check

    done = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(check)], cwd=desk,
                          env={**env, "PACKAGE": "forged.pgp"}, capture_output=True,
                          timeout=60, check=False)  # fmt: skip

    assert done.returncode != 0
    assert b"verified successfully" in (desk / "rnp-status.txt").read_bytes(), "a valid signature,"
    assert shown.gateway_fpr.lower().encode() not in (desk / "rnp-status.txt").read_bytes().lower()
