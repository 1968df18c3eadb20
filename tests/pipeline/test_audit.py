"""The audit trail through `gateway audit`: verify, checkpoints, export, and what it records.

A gateway home with some activity (a partner added, packages sent and delivered) is
tampered with the way an intruder with write access to ledger.db would do it: a separate
`sqlite3` connection that edits, removes, reorders or rehashes rows behind the gateway.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.home import Home
from gateway.app.gateway import actor
from gateway.core.lifecycle import State
from gateway.core.model import chain_hash, chained, detail_digest
from tests.helpers import (
    GATEWAY_ID,
    PARTNER_ID,
    PartnerPgp,
    Templates,
    add_partner,
    cli,
    copy_tree,
    gateway,
    run_once,
    send,
    state,
    stop_agents,
)
from tests.sshd import SshServer

#: The hashed fields of an event, in chain order (`hash` itself is not one of them).
FIELDS = ("id", "at", "actor", "action", "category", "partner", "package_id", "state", "detail",
          "prev_hash")  # fmt: skip


@pytest.fixture(scope="module")
def made_trail(templates: Templates) -> Iterator[Path]:
    """A home with a partner and three packages sent and delivered, made once for the
    module (about half a second of work); each test tampers with a copy of its own."""
    root = Path(tempfile.mkdtemp(prefix="gwa", dir="/tmp"))
    try:
        home = templates.home(GATEWAY_ID, root / "gw")
        with SshServer(root / "sshd") as server:
            add_partner(home, templates.partner(root / "partner-gnupg"), server)
            for n in range(3):
                source = root / f"notice-{n}.xml"
                source.write_bytes(f"<conviction n='{n}'/>".encode())
                send(home, source)
            run_once(home)
        stop_agents(root)
        assert not list(home.root.rglob("*-wal")), "the ledger is closed before it is copied"
        yield home.root
    finally:
        stop_agents(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def trail(made_trail: Path, short_tmp: Path) -> Home:
    """A copy of the module's home with a partner and three packages sent and delivered."""
    copy_tree(made_trail, short_tmp / "gw")
    return Home(short_tmp / "gw")


# -- helpers ------------------------------------------------------------------------------


def sql(home: Home, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on ledger.db behind the gateway's back; its rows."""
    with closing(sqlite3.connect(home.ledger)) as db:
        rows = db.execute(statement, args).fetchall()
        db.commit()
    return rows


def event_count(home: Home) -> int:
    """How many events the trail holds."""
    return int(sql(home, "SELECT count(*) FROM events")[0][0])


def verify(home: Home) -> tuple[int, str, str]:
    """`gateway audit verify`: exit status, stdout, stderr."""
    result = cli(home, "audit", "verify")
    return result.exit_code, result.stdout, result.stderr


def broken_id(stderr: str) -> int:
    """The event id an `audit verify` failure names."""
    match = re.search(r"event (\d+) was edited, removed or reordered", stderr)
    assert match, stderr
    return int(match[1])


def rewrite_from(home: Home, first: int, **changes: str) -> None:
    """Change event `first` and recompute every later hash and prev_hash consistently."""
    columns = ", ".join(FIELDS)
    with closing(sqlite3.connect(home.ledger)) as db:
        (prev,) = db.execute("SELECT hash FROM events WHERE id = ?", [first - 1]).fetchone()
        rows = db.execute(
            f"SELECT {columns} FROM events WHERE id >= ? ORDER BY id",  # noqa: S608 - constants
            [first],
        ).fetchall()
        for row in rows:
            fields = dict(zip(FIELDS, row, strict=True))
            if fields["id"] == first:
                fields.update(changes)
            fields["prev_hash"] = prev
            digest = detail_digest(fields["detail"]) if fields["detail"] is not None else None
            prev = chain_hash(chained([fields[name] for name in FIELDS], digest))
            db.execute(
                "UPDATE events SET at = ?, actor = ?, detail = ?, detail_sha256 = ?, prev_hash = ?, "
                "hash = ? WHERE id = ?",
                [fields["at"], fields["actor"], fields["detail"], digest, fields["prev_hash"], prev,
                 fields["id"]],
            )  # fmt: skip
        db.commit()


def checkpoint(home: Home) -> Path:
    """`gateway audit checkpoint`; the checkpoint file it wrote."""
    result = cli(home, "audit", "checkpoint")
    assert result.exit_code == 0, result.stderr
    path = Path(result.stdout.strip().removeprefix("checkpoint written: "))
    assert path.is_file(), result.stdout
    return path


def export(home: Home, *args: str) -> list[dict[str, Any]]:
    """`gateway audit export ARGS`, each line parsed."""
    result = cli(home, "audit", "export", *args)
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


# -- verify -------------------------------------------------------------------------------


def test_untouched_trail_verifies_with_its_event_count(trail: Home) -> None:
    """An untouched trail is intact, and the count is every event in the ledger."""
    code, out, err = verify(trail)

    assert code == 0, err
    count = event_count(trail)
    assert count > 10, "partner added, three packages taken in, sealed, delivered"
    assert sql(trail, "SELECT max(id) FROM events")[0][0] == count
    assert f"intact: {count} events, 0 signed checkpoints" in out


@pytest.mark.parametrize(
    ("column", "value"),
    [("detail", '{"reason": "nothing to see"}'), ("actor", "mallory"),
     ("at", "2020-01-01T00:00:00.000Z")],
)  # fmt: skip
def test_editing_one_event_is_named(trail: Home, column: str, value: str) -> None:
    """An edited detail, actor or time fails at exactly that event."""
    victim = event_count(trail) // 2
    sql(trail, f"UPDATE events SET {column} = ? WHERE id = ?", value, victim)  # noqa: S608

    code, _, err = verify(trail)

    assert code == 1
    assert err.startswith("error: ")
    assert broken_id(err) == victim


def test_deleting_a_middle_event_names_the_one_after_it(trail: Home) -> None:
    """A removed event shows at the event that follows it."""
    victim = event_count(trail) // 2
    sql(trail, "DELETE FROM events WHERE id = ?", victim)

    code, _, err = verify(trail)

    assert code == 1
    assert broken_id(err) == victim + 1


def test_swapping_two_events_names_the_first_of_them(trail: Home) -> None:
    """Two events' contents swapped (a reorder) fail at the first of the two."""
    first = event_count(trail) // 2
    rest = [c for c in (*FIELDS, "hash") if c != "id"]
    columns = ", ".join(rest)
    rows = dict(
        (row[0], row[1:])
        for row in sql(trail, f"SELECT id, {columns} FROM events WHERE id IN (?, ?)", first,  # noqa: S608
                       first + 1)
    )  # fmt: skip
    assert rows[first] != rows[first + 1]
    assignments = ", ".join(f"{c} = ?" for c in rest)
    for target, source in ((first, first + 1), (first + 1, first)):
        sql(trail, f"UPDATE events SET {assignments} WHERE id = ?", *rows[source], target)  # noqa: S608

    code, _, err = verify(trail)

    assert code == 1
    assert broken_id(err) == first


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_is_counted_and_recorded(trail: Home) -> None:
    """A checkpoint names the head it signed, is recorded, and verify counts it."""
    head = event_count(trail)
    path = checkpoint(trail)

    code, out, err = verify(trail)

    assert code == 0, err
    assert path.name == f"{head:012d}.checkpoint"
    assert "BEGIN PGP SIGNED MESSAGE" in path.read_text()
    assert f"intact: {head + 1} events, 1 signed checkpoints" in out
    (action, detail) = sql(trail, "SELECT action, detail FROM events WHERE id = ?", head + 1)[0]
    assert action == "audit.checkpoint"
    assert json.loads(detail)["event_id"] == head


def test_whole_chain_rewrite_after_a_checkpoint_is_found(trail: Home) -> None:
    """Event 2 edited and every later hash recomputed: the chain holds, the checkpoint does not."""
    path = checkpoint(trail)
    (before,) = sql(trail, "SELECT detail FROM events WHERE id = 2")[0]
    forged = json.dumps({**json.loads(before), "by": "someone else"}, sort_keys=True)
    rewrite_from(trail, 2, detail=forged)
    with gateway(trail) as gw:
        assert gw.ledger.verify_chain() == (event_count(trail), None), "the chain alone passes"

    code, _, err = verify(trail)

    assert code == 1
    assert path.name in err and "rewritten" in err, err


def test_trail_cut_short_after_a_checkpoint_is_found(trail: Home) -> None:
    """The newest events deleted, back past the checkpoint's event: 'removed from its end'."""
    head = event_count(trail)
    path = checkpoint(trail)
    sql(trail, "DELETE FROM events WHERE id >= ?", head - 2)
    with gateway(trail) as gw:
        assert gw.ledger.verify_chain() == (head - 3, None), "the chain alone passes"

    code, _, err = verify(trail)

    assert code == 1
    assert path.name in err and "removed from its end" in err, err


def test_checkpoint_signed_by_another_key_is_refused(trail: Home, partner_pgp: PartnerPgp) -> None:
    """A checkpoint clearsigned by the partner's key (pinned here, but not ours) fails verify."""
    head = event_count(trail)
    (digest,) = sql(trail, "SELECT hash FROM events WHERE id = ?", head)[0]
    doc = {"schema": "gateway-checkpoint/1", "gateway": GATEWAY_ID, "event_id": head,
           "hash": digest, "at": "2026-01-01T00:00:00.000Z"}  # fmt: skip
    signed = partner_pgp.gpg("--local-user", partner_pgp.fingerprint, "--clearsign",
                             "--output", "-", input=json.dumps(doc).encode()).stdout  # fmt: skip
    forged = trail.spool / "audit" / f"{head:012d}.checkpoint"
    forged.parent.mkdir(mode=0o700, exist_ok=True)
    forged.write_bytes(signed)

    code, _, err = verify(trail)

    assert code == 1
    assert forged.name in err and "not signed by this gateway" in err, err


# -- export -------------------------------------------------------------------------------


def test_export_since_prints_json_lines_and_is_recorded(trail: Home) -> None:
    """Lines parse, are in id order, are all at or after T; an earlier T gives more."""
    everything = export(trail)
    middle = everything[len(everything) // 2]["at"]
    first = everything[0]["at"]

    later = export(trail, "--since", middle)
    earlier = export(trail, "--since", first)

    for rows, since in ((later, middle), (earlier, first)):
        ids = [row["id"] for row in rows]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert rows and all(row["at"] >= since for row in rows)
    assert len(earlier) > len(later)
    assert {row["id"] for row in later} < {row["id"] for row in earlier}
    assert later[0]["at"] == middle and isinstance(later[0]["detail"], (dict, type(None)))

    exports = [r for r in export(trail) if r["action"] == "audit.export"]
    assert len(exports) == 3, "each export so far is recorded"
    assert {r["category"] for r in exports} == {"consultation"}
    assert exports[1]["detail"] == {"since": middle, "events": len(later)}
    assert {r["actor"] for r in exports} == {actor()}


def test_export_since_a_whole_second_includes_that_second(trail: Home) -> None:
    """`--since` in the documented form (…T12:00:00Z) includes events within that second."""
    everything = export(trail)
    target = everything[len(everything) // 2]
    since = target["at"][:19] + "Z"  # e.g. 2026-11-01T00:00:00Z, as `audit export --help` shows

    rows = export(trail, "--since", since)

    assert target["id"] in [row["id"] for row in rows], (
        f"event {target['id']} at {target['at']} is after {since} but was left out"
    )


def test_a_since_without_an_offset_is_utc_whatever_the_time_zone(
    trail: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # 5 hours behind UTC in November
    time.tzset()
    try:
        everything = export(trail)
        target = everything[len(everything) // 2]
        naive = target["at"][:19]  # 2026-11-01T12:00:00, no offset

        rows = export(trail, "--since", naive)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()

    assert rows[0]["at"][:19] == naive, "read as local time, the export would start 5 h later"
    assert [r["id"] for r in rows][:-1] == [r["id"] for r in everything if r["at"][:19] >= naive]


def test_export_refuses_a_since_that_is_not_a_time(trail: Home) -> None:
    """A --since that is no time is an error that says so, not an empty export."""
    result = cli(trail, "audit", "export", "--since", "yesterday")

    assert result.exit_code == 2, result.stdout  # UsageError
    assert result.stdout == ""
    assert "yesterday" in result.stderr or "--since" in result.stderr, result.stderr


# -- what the trail records ---------------------------------------------------------------


def test_every_state_change_of_a_delivered_package_is_in_the_trail(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """received, sealed, delivered, acknowledged: each an event with actor and category."""
    home, pgp, server = exchange
    source = short_tmp / "notice.xml"
    source.write_bytes(b"<conviction/>")
    pid = send(home, source)
    run_once(home)
    digest = hashlib.sha256((server.upload / f"{pid}.pgp").read_bytes()).hexdigest()
    receipt = {"schema": "gateway-receipt/1", "package_id": pid, "from": PARTNER_ID,
               "to": GATEWAY_ID, "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "ciphertext_sha256": digest, "disposition": "accepted"}  # fmt: skip
    (server.download / f"{pid}.receipt").write_bytes(
        pgp.gpg("--local-user", pgp.fingerprint, "--clearsign", "--output", "-",
                input=json.dumps(receipt).encode()).stdout
    )  # fmt: skip
    run_once(home)
    assert state(home, pid) is State.ACKNOWLEDGED

    rows = [r for r in export(home) if r["package_id"] == pid]

    changes = [(r["action"], r["state"], r["category"], r["actor"]) for r in rows if r["state"]]
    assert changes == [
        ("intake", "received", "collection", actor()),
        ("seal", "sealed", None, "daemon"),
        ("deliver", "delivered", "disclosure", "daemon"),
        ("receipt", "acknowledged", None, "daemon"),
    ]
    erased = [r for r in rows if r["action"] == "erase"]
    assert [(r["category"], r["actor"]) for r in erased] == [("erasure", "daemon")]
    assert all(r["at"] and r["actor"] for r in rows)
    seal = next(r for r in rows if r["action"] == "seal")
    assert seal["detail"]["recipient_key"] == pgp.fingerprint
    deliver = next(r for r in rows if r["action"] == "deliver")
    assert deliver["detail"]["ciphertext_sha256"] == digest
    code, _, err = verify(home)
    assert code == 0, err


def test_every_event_of_a_package_names_its_partner(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    """SPEC 6: each event carries package and partner, the erasure after sealing included."""
    home = exchange[0]
    source = short_tmp / "notice.xml"
    source.write_bytes(b"<conviction/>")
    pid = send(home, source)
    run_once(home)
    assert state(home, pid) is State.DELIVERED

    rows = [r for r in export(home) if r["package_id"] == pid]

    assert {r["action"] for r in rows} >= {"intake", "seal", "erase", "deliver"}
    unnamed = [(r["id"], r["action"]) for r in rows if r["partner"] != PARTNER_ID]
    assert unnamed == [], f"events of {pid} that do not name {PARTNER_ID}: {unnamed}"
