"""docs/partners.md, run as written: a partner with only gpg, tar and a shell."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import GATEWAY_ID, PARTNER_ID, PartnerPgp, cli, gateway, run_once, send
from tests.sshd import SshServer

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "partners.md"


def blocks(section: str) -> str:
    """The shell code blocks of one numbered section of the guide, joined."""
    text = GUIDE.read_text()
    start = text.index(f"\n## {section}.")
    end = text.find("\n## ", start + 1)
    return "\n".join(re.findall(r"```sh\n(.*?)```", text[start : end if end > 0 else None], re.S))


def run(script: str, cwd: Path, env: dict[str, str]) -> str:
    """Run commands in bash as the partner would, stopping at the first failure."""
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, f"guide commands failed:\n{script}\n--- stderr:\n{done.stderr}"
    return done.stdout


def test_the_partner_guide_works_as_written(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, pgp, server = exchange
    desk = short_tmp / "desk"
    desk.mkdir()
    with gateway(home) as gw:
        gateway_fpr = gw.own_key
    env = {**os.environ, "GNUPGHOME": str(pgp.home), "GATEWAY_FPR": gateway_fpr,
           "GATEWAY_ID": GATEWAY_ID, "MY_ID": PARTNER_ID, "MY_FPR": pgp.fingerprint}  # fmt: skip
    (desk / "GB-ACRO.asc").write_text(cli(home, "keys", "export", "--openpgp").stdout)
    run(blocks("1"), desk, env)

    (short_tmp / "notice.xml").write_bytes(b"<conviction>fictional</conviction>\n")
    pid = send(home, short_tmp / "notice.xml")
    run_once(home)
    shutil.copy(server.upload / f"{pid}.pgp", desk)
    run(blocks("2") + "\n" + blocks("3"), desk, env)  # one shell: section 3 uses section 2's names
    assert (
        desk / pid / "payload" / "notice.xml"
    ).read_bytes() == b"<conviction>fictional</conviction>\n"

    shutil.copy(desk / f"{pid}.receipt", server.download)
    run_once(home)
    with gateway(home) as gw:
        assert gw.ledger.package(pid).state is State.ACKNOWLEDGED
    assert not (server.download / f"{pid}.receipt").exists(), "fetched, then removed"

    (desk / "response.xml").write_bytes(b"<response>no convictions</response>\n")
    sent_id = run(blocks("5") + '\necho "$SENT_ID"', desk, env).split()[-1]
    shutil.copy(desk / f"{sent_id}.pgp", server.download)
    run_once(home)
    with gateway(home) as gw:
        assert gw.ledger.package(sent_id).state is State.ACCEPTED
    delivered = home.inbound / PARTNER_ID / sent_id
    assert (delivered / "response.xml").read_bytes() == b"<response>no convictions</response>\n"

    shutil.copy(server.upload / f"{sent_id}.receipt", desk)
    run(blocks("4"), desk, {**env, "SENT_ID": sent_id})
    receipt = pgp.gpg("--decrypt", str(desk / f"{sent_id}.receipt")).stdout.decode()
    assert '"disposition": "accepted"' in receipt
