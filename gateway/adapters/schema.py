"""The ledger's tables, as the migrations that make them: each applied once, in order, and
recorded in the ledger itself (sqlite-utils' `Migrations`); `adapters/ledger.py` applies
the pending ones when it opens a ledger. A change of schema is a new migration at the end,
never an edit of one already released.
"""

from __future__ import annotations

from typing import Final

import sqlite_utils
from sqlite_utils.migrations import Migrations

MIGRATIONS: Final = Migrations("gateway")


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    """Partners, packages and events."""
    db.table("partners").create(
        {
            "id": str,
            "transport": str,
            "host": str,
            "port": int,
            "user": str,
            "upload_dir": str,
            "download_dir": str,
            "openpgp_key": str,
            "ssh_key": str,
            "hide_recipient": int,
            "enabled": int,
            "added_at": str,
        },
        pk="id",
        not_null={"transport", "openpgp_key", "enabled", "added_at"},
    )
    db.table("packages").create(
        {
            "package_id": str,
            "direction": str,
            "partner": str,
            "kind": str,
            "state": str,
            "payload_name": str,
            "payload_size": int,
            "payload_sha256": str,
            "reference": str,
            "legal_basis": str,
            "marking": str,
            "in_reply_to": str,
            "sender_key": str,
            "recipient_key": str,
            "ciphertext_sha256": str,
            "ciphertext_size": int,
            "created_at": str,
            "updated_at": str,
            "delivered_at": str,
            "receipt_state": str,
            "retry_from": float,
            "failures": int,
            "next_attempt_at": float,
            "last_error": str,
        },
        pk="package_id",
        not_null={"direction", "state", "created_at", "updated_at"},
        defaults={"failures": 0},
    )
    db.table("packages").create_index(["state", "partner"])
    db.table("packages").create_index(["partner", "state"])
    db.table("events").create(
        {
            "id": int,
            "at": str,
            "actor": str,
            "action": str,
            "category": str,
            "partner": str,
            "package_id": str,
            "state": str,
            "detail": str,
            "prev_hash": str,
            "hash": str,
        },
        pk="id",
        not_null={"at", "actor", "action", "prev_hash", "hash"},
    )
    db.table("events").create_index(["package_id"])
    db.table("own_keys").create(
        {"fingerprint": str, "created_at": str}, pk="fingerprint", not_null={"created_at"}
    )
    db.table("partner_keys").create(
        {"partner": str, "fingerprint": str, "added_at": str, "retired_at": float},
        pk=("partner", "fingerprint"),
        not_null={"added_at"},
    )


@MIGRATIONS()
def m002_overdue_index(db: sqlite_utils.Database) -> None:
    """Index (state, partner, delivered_at) in place of (state, partner).

    `status` counts overdue packages (delivered, no receipt in time) per partner. With
    delivered_at only in the table, SQLite read each delivered row: 0.11-0.18 s of a
    1,000,000-package ledger (bench/ledger_scale.py). With it in the index the count
    reads the index alone: 0.006 s. The index still serves every lookup by state, or by
    state and partner, that the old one did; it takes 42 bytes a package instead of 29.
    Building it on that ledger took 3.4 s, once, under the write lock.
    """
    db.execute("DROP INDEX idx_packages_state_partner")
    db.table("packages").create_index(["state", "partner", "delivered_at"])


@MIGRATIONS()
def m003_obligations(db: sqlite_utils.Database) -> None:
    """Partner policy (regimes per kind, countries served) and each package's duty
    (adapters/obligations.py reads and writes them)."""
    db.table("partner_regimes").create({"partner": str, "kind": str, "regime": str, "position": int,
                                        "added_at": str}, pk=("partner", "kind", "regime"))  # fmt: skip
    db.table("partner_countries").create(
        {"partner": str, "country": str}, pk=("partner", "country")
    )
    db.table("obligations").create({"package_id": str, "duty": str, "due_at": str, "recorded_on": str,
                                    "nationalities": str, "supersedes": str, "warned": str,
                                    "met_at": str, "met_by": str}, pk="package_id")  # fmt: skip
    db.table("obligations").create_index(["met_at", "duty"])  # the open duties: met_at NULL
    db.table("obligations").create_index(["supersedes"])
    db.table("packages").create_index(["in_reply_to"])  # what answers a request


@MIGRATIONS()
def m004_erasable_details(db: sqlite_utils.Database) -> None:
    """The SHA-256 of each new event's detail, chained in the detail's place, so retention
    can erase a detail without breaking the chain; and what was erased of each package."""
    db.table("events").add_column("detail_sha256", str)
    db.table("packages").add_column("erased", str)


@MIGRATIONS()
def m005_approvals_and_reports(db: sqlite_utils.Database) -> None:
    """Four-eyes: the kinds of a partner's packages that wait for a second operator.

    Reports: an index of when packages were taken in, which `gateway report` reads by
    (one day of a 1,000,000-package ledger: 0.19 s; 6.7 s when every package was read). Building
    it on that ledger took 0.78 s, once; it takes 33 bytes a package.
    """
    db.table("partners").add_column("approval", str)
    db.table("packages").create_index(["created_at"])


@MIGRATIONS()
def m006_contacts(db: sqlite_utils.Database) -> None:
    """Each partner's health (`model.Contact`), one row a partner, updated at each contact."""
    columns = {"partner": str, "last_ok": float, "last_failure": float, "last_error": str,
               "down_since": float, "failures": int}  # fmt: skip
    db.table("contacts").create(columns, pk="partner", defaults={"failures": 0})


@MIGRATIONS()
def m007_ssh_legacy(db: sqlite_utils.Database) -> None:
    """A push partner whose old SSH server needs AES-CBC or HMAC-SHA1 (`partner set
    --ssh-algorithms legacy`); 0 for every partner until an operator says so."""
    db.table("partners").add_column("ssh_legacy", int, not_null_default=0)
