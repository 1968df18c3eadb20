"""Ledger scale: `status`, `ledger list` and `audit verify` over a ledger of a million packages.

The rows go in with plain SQL in one transaction (what the gateway would write over
years, written in seconds): 20 partners, both directions, a realistic mix of states,
and one hash-chained audit event per package, continuing the chain `init` began.
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bench.measure import REPO, Row, Target, median
from bench.rig import GATEWAY_ID, Rig
from gateway.adapters.home import Home
from gateway.admin import health, keys, partners
from gateway.app.gateway import Gateway
from gateway.core.model import chain_hash, utc
from gateway.core.names import KINDS, new_ulid
from tests.helpers import PartnerPgp

Say = Callable[[str], None]
PARTNERS = (
    "AT-BMJ",
    "AU-AFP",
    "BE-CR",
    "CA-CPIC",
    "CZ-RT",
    "DE-BZR",
    "DK-KR",
    "ES-RCP",
    "FI-RR",
    "FR-CJN",
    "GR-PRS",
    "HU-BR",
    "IE-GNCI",
    "IT-CED",
    "NL-JD",
    "PL-KRK",
    "PT-DGAJ",
    "RO-CAZ",
    "SE-RB",
    "US-NCB",
)
#: (direction, state, share): most packages end acknowledged or accepted, some are open.
MIX = (
    ("out", "acknowledged", 0.56),
    ("out", "delivered", 0.04),
    ("out", "refused", 0.01),
    ("out", "failed", 0.005),
    ("out", "held", 0.005),
    ("out", "cancelled", 0.005),
    ("out", "sealed", 0.005),
    ("out", "received", 0.005),
    ("out", "rejected", 0.02),
    ("in", "accepted", 0.33),
    ("in", "rejected", 0.01),
)
YEARS = 2
COLUMNS = (
    "package_id",
    "direction",
    "partner",
    "kind",
    "state",
    "payload_name",
    "payload_size",
    "payload_sha256",
    "reference",
    "legal_basis",
    "marking",
    "in_reply_to",
    "sender_key",
    "recipient_key",
    "ciphertext_sha256",
    "ciphertext_size",
    "created_at",
    "updated_at",
    "delivered_at",
    "receipt_state",
    "failures",
    "next_attempt_at",
    "last_error",
)
EVENT_COLUMNS = (
    "id",
    "at",
    "actor",
    "action",
    "category",
    "partner",
    "package_id",
    "state",
    "detail",
    "prev_hash",
    "hash",
)
#: The event each package's state leaves last, and its DPA category.
LAST_ACTION = {
    "acknowledged": ("receipt", None),
    "delivered": ("deliver", "disclosure"),
    "refused": ("receipt", None),
    "failed": ("fail", None),
    "held": ("hold", None),
    "cancelled": ("cancel", None),
    "sealed": ("seal", None),
    "received": ("intake", "collection"),
    "rejected": ("quarantine", "collection"),
    "accepted": ("accept", "collection"),
}


def partner_keys(rig: Rig, folder: Path) -> dict[str, tuple[str, Path]]:
    """A key pair for each partner, in one keyring; their fingerprints and exported files."""
    pgp = PartnerPgp(folder, PARTNERS[0])
    rig.keyrings.append(folder)
    keys = {PARTNERS[0]: (pgp.fingerprint, pgp.public_key)}
    for partner in PARTNERS[1:]:
        known = set(pgp.colons("--list-keys"))
        pgp.gpg(
            "--quick-gen-key",
            f"{partner} <x@{partner.lower()}.invalid>",
            "ed25519",
            "cert,sign",
            "2y",
        )
        (fpr,) = set(pgp.colons("--list-keys")) - known
        pgp.gpg("--quick-add-key", fpr, "cv25519", "encr", "2y")
        path = folder / f"{partner}.asc"
        path.write_bytes(pgp.gpg("--export", "--armor", fpr).stdout)
        keys[partner] = (fpr, path)
    return keys


def packages(
    count: int, keys: dict[str, str], own: str, rng: random.Random
) -> Iterator[tuple[Any, ...]]:
    """`count` package rows, oldest first, over the last YEARS years; the same for the same `rng` seed."""
    now = time.time()
    span = YEARS * 365 * 86400
    states = [(d, s) for d, s, _ in MIX]
    weights = [w for _, _, w in MIX]
    for i in range(count):
        created = now - span + span * i / count
        direction, state = rng.choices(states, weights)[0]
        partner = PARTNERS[rng.randrange(len(PARTNERS))]
        sender = GATEWAY_ID if direction == "out" else partner
        at = utc(created)
        quarantined = state == "rejected"
        delivered = utc(created + 30) if state in ("delivered", "acknowledged", "refused") else None
        size = rng.randrange(2_000, 5_000_000)
        kind = KINDS[rng.randrange(4)] if direction == "out" else "response"
        yield (
            f"{sender}-{new_ulid(created, rng.randbytes(10))}",
            direction,
            partner,
            kind,
            state,
            None if quarantined else f"notice-{i:07d}.xml",
            None if quarantined else size,
            None if quarantined else rng.randbytes(32).hex(),
            f"CASE-{2025 + i % 2}-{i:06d}",
            "Council Framework Decision 2009/315/JHA, Art. 4" if i % 3 else None,
            "OFFICIAL-SENSITIVE",
            None,
            None if quarantined else (own if direction == "out" else keys[partner]),
            None if quarantined else (keys[partner] if direction == "out" else own),
            rng.randbytes(32).hex(),
            size + 1_100,
            at,
            utc(created + 3_600),
            delivered,
            "sent" if state == "accepted" else None,
            3 if state == "failed" else 0,
            None,
            {
                "failed": "cannot connect to the partner (timed out); will retry",
                "refused": "refused by the partner: payload not readable",
                "rejected": "the file name ends like a temporary file: rename the file",
            }.get(state),
        )


def events(rows: Iterable[tuple[Any, ...]], first_id: int, prev: str) -> Iterator[tuple[Any, ...]]:
    """One chained event per package row, continuing the chain after (`first_id` - 1, `prev`)."""
    for n, row in enumerate(rows):
        pid, _, partner, kind, state = row[:5]
        action, category = LAST_ACTION[state]
        detail = json.dumps(
            {"kind": kind, "reason": row[22], "sha256": row[14]}, sort_keys=True, ensure_ascii=False
        )
        fields = (
            first_id + n,
            row[17],
            "daemon",
            action,
            category,
            partner,
            pid,
            state,
            detail,
            prev,
        )
        prev = chain_hash(fields)
        yield (*fields, prev)


def seeded() -> random.Random:
    """The same made-up data on every run (for rows, not secrets)."""
    return random.Random(1)  # noqa: S311


def fill(home: Home, count: int, keys: dict[str, str], own: str) -> dict[str, int]:
    """Insert `count` packages and one chained event for each, in one transaction.

    Returns the bytes each table and index takes (SQLite's dbstat), and the file's size.
    """
    db = sqlite3.connect(home.ledger, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")  # no WAL as large as the load; WAL again after
    db.execute("PRAGMA synchronous=OFF")
    head_id, head = db.execute("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
    add_package = (
        f"INSERT INTO packages ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: S608
    )
    add_event = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"  # noqa: S608
    rows = packages(count, keys, own, seeded())
    db.execute("BEGIN")
    while batch := list(itertools.islice(rows, 20_000)):
        db.executemany(add_package, batch)
        chained = list(events(batch, head_id + 1, head))
        db.executemany(add_event, chained)
        head_id, head = chained[-1][0], chained[-1][-1]
    db.execute("COMMIT")
    sizes = {
        str(name): int(size)
        for name, size in db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
    }
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    sizes["file"] = home.ledger.stat().st_size
    return sizes


def whole(rig: Rig, home: Home, args: list[str], runs: int) -> tuple[list[float], bytes]:
    """Seconds of `gateway ARGS` as an operator runs it (a new process each time), warm-up first."""
    seconds, out = [], b""
    for i in range(runs + 1):
        start = time.perf_counter()
        out = rig.gateway_cli(*args, home=home)
        if i:
            seconds.append(time.perf_counter() - start)
    return seconds, out


def ledger_scale(rig: Rig, count: int, runs: int, say: Say) -> list[Row]:
    """Scenario 6."""
    home = Home(rig.root / "big")
    found = partner_keys(rig, rig.root / "pk")
    with keys.init(home, GATEWAY_ID, "bench") as gw:
        rig.keyrings.append(home.gnupg)
        for n, (partner, (fpr, path)) in enumerate(found.items()):
            partners.add_push(
                gw,
                partner,
                path,
                fpr,
                f"sftp://bench@127.0.0.1:{2201 + n}",
                rig.server.host_key_line,
                "benchmark partner",
            )
        own = gw.own_key
    say(f"    inserting {count} packages and {count} events")
    start = time.perf_counter()
    sizes = fill(home, count, {p: f for p, (f, _) in found.items()}, own)
    say(f"    inserted in {time.perf_counter() - start:.1f} s")
    partner = PARTNERS[-1]
    status, _ = whole(rig, home, ["status", "--json"], runs)
    listing, out = whole(
        rig, home, ["ledger", "list", "--state", "delivered", "--partner", partner, "--json"], runs
    )
    listed = len(json.loads(out))
    verify, _ = whole(rig, home, ["audit", "verify"], max(1, runs // 2))
    inside = in_process(home, partner)
    startup, _ = whole(rig, home, ["--version"], runs)
    inside["cli start-up (gateway --version)"] = median(startup)
    per_package = sum(n for t, n in sizes.items() if "packages" in t) / count
    per_event = sum(n for t, n in sizes.items() if "events" in t) / count
    second = Target("gateway", "<=", 1, "s")
    return [
        Row(
            f"6. status --json, {count} packages",
            "s",
            median(status),
            target=second,
            details={"runs_s": status, "in_process_s": inside},
        ),
        Row(
            f"6. ledger list --state delivered --partner X --json ({listed} rows)",
            "s",
            median(listing),
            target=second,
            details={"runs_s": listing},
        ),
        Row(f"6. audit verify, {count} events", "s", median(verify), details={"runs_s": verify}),
        Row(
            "6. ledger bytes per package (+1 event)",
            "B",
            sizes["file"] / count,
            details={
                "package_row_and_indexes": per_package,
                "event_row_and_index": per_event,
                "estimated_with_6_events": per_package + 6 * per_event,
                "bytes_by_table": sizes,
            },
        ),
    ]


def in_process(home: Home, partner: str) -> dict[str, float]:
    """What inside `status` and `ledger list` takes the time, timed in this process."""
    spent: dict[str, float] = {}
    with Gateway(home, "bench") as gw:
        for name, work in (
            ("status: ledger.counts (SQL)", lambda: gw.ledger.counts(utc(time.time() - 86400))),
            ("status: health.keys (gpg --list-keys x 21)", lambda: list(health.keys(gw))),
            (
                "list: ledger.packages",
                lambda: gw.ledger.packages(state="delivered", partner=partner),
            ),
            ("verify: ledger.verify_chain", gw.ledger.verify_chain),
        ):
            start = time.perf_counter()
            work()
            spent[name] = time.perf_counter() - start
    # What `status` imports: gateway.cli alone no longer loads any command's module.
    probe = "import time; s = time.perf_counter(); import gateway.cli.status_cmd; print(time.perf_counter() - s)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    spent["import gateway.cli.status_cmd"] = float(done.stdout)
    return spent
