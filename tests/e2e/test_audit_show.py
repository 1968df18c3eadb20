"""`gateway audit show ID`: the DPA 2018 s.62 record of one package, in one command."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import PARTNER_ID, PartnerPgp, cli, events, package, run_once, sha256
from tests.sshd import SshServer

SECRET = b"<conviction><person>FICTIONAL, Testperson</person></conviction>\n"


def test_the_record_of_a_sent_package_names_who_what_whom_basis_and_every_reading(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, pgp, _ = exchange
    assert cli(home, "partner", "set", PARTNER_ID, "--needs-approval", "all",
               "--reason", "policy", actor="carol").exit_code == 0  # fmt: skip
    source = short_tmp / "notice.xml"
    source.write_bytes(SECRET)
    sent = cli(home, "send", str(source), "--to", PARTNER_ID, "--kind", "conviction",
               "--ref", "CASE-4711", "--legal-basis", "CoE-1959-Art22", actor="alice")  # fmt: skip
    assert sent.exit_code == 0, sent.stderr
    pid = sent.stdout.strip()
    assert cli(home, "approve", pid, "--reason", "checked", actor="bob").exit_code == 0
    run_once(home)
    row = package(home, pid)
    assert row.state is State.DELIVERED

    # An export of the whole trail read this package's events; one from a later time did not.
    assert cli(home, "audit", "export", actor="erin").exit_code == 0
    assert (
        cli(home, "audit", "export", "--since", "2099-01-01T00:00:00Z", actor="erin").exit_code == 0
    )
    exports = [e for e in events(home) if e.action == "audit.export"]

    shown = cli(home, "audit", "show", pid, "--json", actor="frank")
    assert shown.exit_code == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["who"] == "alice"
    assert doc["actors"] == ["alice", "bob", "daemon"]
    assert doc["direction"] == "out" and doc["state"] == "delivered"
    assert doc["when"] == {"taken_in": row.created_at, "delivered": row.delivered_at,
                           "last_change": row.updated_at}  # fmt: skip
    assert doc["what"] == {
        "kind": "conviction", "reference": "CASE-4711", "marking": None,
        "payload_name": "notice.xml", "payload_size": len(SECRET), "payload_sha256": sha256(SECRET),
        "ciphertext_sha256": row.ciphertext_sha256, "ciphertext_size": row.ciphertext_size,
        "in_reply_to": None,
    }  # fmt: skip
    assert doc["recipient"] == {"partner": PARTNER_ID, "key": pgp.fingerprint}
    assert doc["legal_basis"] == "CoE-1959-Art22"
    assert doc["basis"] == {
        "title": "Council of Europe: exchange of information from judicial records",
        "citation": "European Convention on Mutual Assistance in Criminal Matters, "
        "Strasbourg 1959 (ETS No. 030), Art. 22",
        "use_restrictions": [],
    }
    assert doc["duty"] is None, "Art. 22 is a batch duty, not a clock of this package"
    assert [(e["action"], e["actor"]) for e in doc["approvals"]] == [("approve", "bob")]
    assert [e["action"] for e in doc["disclosures"]] == ["deliver"]
    assert [e["id"] for e in doc["events"]] == [e.id for e in events(home, pid)][:-1]
    assert [(e["action"], e["actor"]) for e in doc["consultations"]] == [
        ("approve", "bob"),
        ("audit.export", "erin"),
    ]
    assert doc["consultations"][1]["id"] == exports[0].id
    assert "FICTIONAL" not in shown.stdout, "never the contents"

    # Reading the record is a consultation too, shown the next time, with its reader.
    again = cli(home, "audit", "show", pid, actor="grace")
    assert again.exit_code == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == f"package      {pid} (outbound, delivered)"
    assert lines[1] == "who          alice; actors: alice, bob, daemon, frank"
    assert f"recipient    {PARTNER_ID} (key {pgp.fingerprint})" in lines
    assert (
        "legal basis  CoE-1959-Art22: Council of Europe: exchange of information from judicial "
        "records (European Convention on Mutual Assistance in Criminal Matters, Strasbourg 1959 "
        "(ETS No. 030), Art. 22)"
    ) in lines
    assert "duty         none" in lines
    consultations = lines[lines.index("consultations:") + 1 :]
    assert [line.split()[1:4] for line in consultations] == [
        ["bob", "approve", "consultation"],
        ["erin", "audit.export", "consultation"],
        ["frank", "audit.show", "consultation"],
    ]
    last = events(home)[-1]
    assert (last.action, last.actor, last.package_id, last.category) == (
        "audit.show", "grace", pid, "consultation",
    )  # fmt: skip


def test_no_such_package(home: Home) -> None:
    missing = "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"
    done = cli(home, "audit", "show", missing)
    assert done.exit_code == 30
    assert done.stderr == f"error: no package {missing} in the ledger: see `gateway ledger list`\n"
