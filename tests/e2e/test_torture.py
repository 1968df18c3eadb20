"""The torture run of tests/torture.py: a small one in the suite, the full one on request.

The full run (at least 300 packages both ways, 30 kills of `gateway run`) takes minutes;
it runs with `pytest -m torture` or `scripts/faults --torture`, which prints its tally.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torture import GW, Tally, Torture, torture


@pytest.mark.slow
def test_a_small_torture_run_loses_nothing_and_sends_nothing_twice(short_tmp: Path) -> None:
    run = Torture(short_tmp / "t", seed=20261206, packages=20, kills=3, big=0, killed_sends=1,
                  settle_seconds=60, say=lambda _: None)  # fmt: skip
    try:
        tally = run.run()

        print(tally.report())  # shown by pytest when the test failed
        assert tally.ok, tally.report()
        assert tally.dropped == 21 and tally.accepted >= 20
        assert tally.delivered == tally.accepted
        assert sum(n for what, n in tally.kills.items() if what.startswith("gateway run")) >= 3
        assert sum(n for what, n in tally.kills.items() if what.startswith("send")) == 1
        assert set(tally.audit) == {"GB-ACRO", "US-NCB", "NL-NP"}

        # The count sees a loss: one package taken away from where it arrived.
        next(run.homes[GW].inbound.glob("*/*/t*.xml")).unlink()
        run.tally = Tally(run.seed)
        run.reckon()
        assert (run.tally.lost, run.tally.delivered) == (1, tally.delivered - 1)
        assert not run.tally.ok
    finally:
        run.close()


@pytest.mark.torture
@pytest.mark.timeout(3600)
def test_the_full_torture_run_loses_nothing_and_sends_nothing_twice(short_tmp: Path) -> None:
    tally = torture(short_tmp / "t", seed=20261207)

    print(tally.report())
    assert tally.ok, tally.report()
    assert tally.dropped >= 300 and tally.delivered == tally.accepted
    assert sum(n for what, n in tally.kills.items() if what.startswith("gateway run")) >= 25
