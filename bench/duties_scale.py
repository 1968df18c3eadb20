"""Duties at scale: `status` and the daemon's warning pass over N met notification duties.

`python -m bench.duties_scale [N]` writes N delivered notifications, each with its duty,
into a fresh ledger with plain inserts, then times the first look (which keeps every
duty it finds met), the looks after it, and the per-partner count of duties met in time.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from gateway.adapters import regimes
from gateway.adapters.clock import SystemClock
from gateway.adapters.ledger import Ledger
from gateway.core.model import utc
from gateway.core.settings import Settings
from gateway.pipeline.duties import Duties


def main(n: int) -> None:
    """Build the ledger and print the timings."""
    root = Path(tempfile.mkdtemp(prefix="duties-"))
    ledger = Ledger(root / "ledger.db", "bench", SystemClock())
    now = time.time()
    with ledger.transaction():
        ledger.db.table("partners").insert({"id": "US-NCB", "transport": "pull",
                                            "openpgp_key": "0" * 40, "enabled": 1, "added_at": utc(now)})  # fmt: skip
        ledger.db.table("packages").insert_all(
            ({"package_id": f"GB-ACRO-{i:026d}", "direction": "out", "partner": "US-NCB",
              "kind": "conviction", "state": "acknowledged", "created_at": utc(now - 30 * 86400),
              "updated_at": utc(now), "delivered_at": utc(now - 29 * 86400),
              "legal_basis": "MOU-TEMPLATE"} for i in range(n)), batch_size=5000)  # fmt: skip
        ledger.db.table("obligations").insert_all(
            ({"package_id": f"GB-ACRO-{i:026d}", "duty": "notify", "due_at": utc(now - 2 * 86400),
              "nationalities": "[]"} for i in range(n)), batch_size=5000)  # fmt: skip
    duties = Duties(ledger, lambda: regimes.load(root / "regimes.toml"), Settings("GB-ACRO"))
    for what in ("first look (keeps each met duty)", "next look", "warning pass"):
        started = time.perf_counter()
        duties.warn() if what == "warning pass" else duties.standings()
        print(f"{n} met duties, {what}: {time.perf_counter() - started:.3f} s")
    started = time.perf_counter()
    duties.obligations.met_in_time()
    print(f"{n} met duties, met in time per partner: {time.perf_counter() - started:.3f} s")
    ledger.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
