"""`python -m bench.run [--quick] [--json FILE] [--only 1,2,...] [--cprofile DIR]`: the gateway against the bare tools.

Starts its own sshd on loopback (the partner's server), a partner played by plain gpg
and a gateway home, runs each scenario after a warm-up with gateway and baseline runs
alternating (A B A B), and prints the machine, then a table of medians and targets.
Progress goes to stderr, the report to stdout, and with --json all samples to FILE.
Full sizes take about a quarter of an hour; --quick (1/8 sizes, fewer repeats) about
two minutes. Nothing is asserted: a benchmark prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import inbound, ledger_scale, outbound
from bench.child import PROFILE_ENV
from bench.measure import (
    MIB,
    REPO,
    Row,
    become_subreaper,
    byte_compile,
    cpu_spent,
    filesystem,
    git,
    machine,
    other_load,
    processes,
    sources,
    table,
)
from bench.rig import BASE, Rig

#: Above this share of the machine used by other processes, a scenario's figures are flagged.
DISTURBED = 0.05


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and repeats for one mode."""

    large: int
    leg: int
    small: int
    samples: int
    inbound: int
    ledger: int
    repeats: int  # timed runs after the warm-up, for each A/B scenario
    leg_repeats: int
    cli_runs: int
    warm: int  # packages in the warm-up of scenarios 3 and 5
    diagnose: bool  # one more, instrumented pass in scenarios 3 and 5


FULL = Plan(
    large=1024 * MIB,
    leg=512 * MIB,
    small=1000,
    samples=20,
    inbound=1000,
    ledger=1_000_000,
    repeats=3,
    leg_repeats=5,
    cli_runs=5,
    warm=100,
    diagnose=True,
)
QUICK = Plan(
    large=128 * MIB,
    leg=64 * MIB,
    small=200,
    samples=5,
    inbound=200,
    ledger=100_000,
    repeats=1,
    leg_repeats=3,
    cli_runs=2,
    warm=20,
    diagnose=False,
)


def say(text: str) -> None:
    """Progress, on stderr."""
    print(text, file=sys.stderr, flush=True)


def scenarios(rig: Rig, plan: Plan) -> dict[str, Callable[[], list[Row]]]:
    """The scenarios by number, each returning its rows."""
    return {
        "1": lambda: outbound.large_package(rig, plan.large, plan.repeats, say),
        "2": lambda: outbound.sftp_leg(rig, plan.leg, plan.leg_repeats, say),
        "3": lambda: outbound.many_small(
            rig, plan.small, plan.repeats, say, plan.warm, plan.diagnose
        ),
        "4": lambda: outbound.latency(rig, plan.samples, say),
        "5": lambda: inbound.inbound(
            rig, plan.inbound, plan.repeats, say, plan.warm, plan.diagnose
        ),
        "6": lambda: ledger_scale.ledger_scale(rig, plan.ledger, plan.cli_runs, say),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print (and optionally save) the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/8 sizes, fewer repeats")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write every sample here")
    parser.add_argument("--only", metavar="N,N", help="run only these scenarios, e.g. 1,2")
    parser.add_argument(
        "--dir",
        type=Path,
        default=BASE,
        help="the folder the rig (servers, keyrings, homes, files) is made in (default /tmp)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="sample every gateway process with py-spy into DIR (slows them: "
        "figures from a profiled run are not comparable); see bench.profile",
    )
    parser.add_argument(
        "--cprofile",
        metavar="DIR",
        type=Path,
        help="profile the CPU of every thread of the instrumented passes of scenarios 3 and 5 "
        "(made even with --quick) with cProfile into DIR; see bench.profile",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.cprofile:
        args.cprofile.mkdir(parents=True, exist_ok=True)
        os.environ[PROFILE_ENV] = str(args.cprofile.resolve())  # read by bench.child
        plan = dataclasses.replace(plan, diagnose=True)
    byte_compile(REPO)  # the gateway as installed, not compiled anew by each process
    started = datetime.now(UTC)
    report = {
        "schema": "gateway-bench/1",
        "mode": "quick" if args.quick else "full",
        "started_at": started.isoformat(timespec="seconds"),
        "git": git(),
        "machine": machine(),
        "plan": dataclasses.asdict(plan),
    }
    code = sources()
    rows: list[Row] = []
    loads: dict[str, dict[str, Any]] = {}
    clock = time.perf_counter()
    become_subreaper()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    rig = Rig(say, args.profile, args.dir)
    try:
        chosen = scenarios(rig, plan)
        for number in (args.only or ",".join(chosen)).split(","):
            say(f"scenario {number}")
            before, begun = processes(), time.perf_counter()
            new = chosen[number.strip()]()
            took = time.perf_counter() - begun
            spent = cpu_spent(before, processes(), rig.root)
            load = {
                "seconds": round(took, 1),
                "other_cpu_s": round(other_load(spent), 1),
                "other_share": round(other_load(spent) / (took * (os.cpu_count() or 1)), 3),
                "cpu_s_by_process": {
                    n: round(c, 2) for n, c in list(spent.items())[:10] if c > 0.005
                },
            }
            loads[number] = load
            for row in new:
                row.details["machine_load"] = load
            rows += new
            say(f"  done in {took:.0f} s")
    finally:
        rig.close()
    report["seconds"] = round(time.perf_counter() - clock, 1)
    # After the run: its own churn of files is what its scenarios met.
    report["machine"]["rig_filesystem"] = filesystem(args.dir)  # type: ignore[index]
    now = sources()
    report["changed_during_run"] = sorted(
        p for p in code.keys() | now.keys() if code.get(p) != now.get(p)
    )
    report["rows"] = [r.as_json() for r in rows]
    print(
        f"gateway benchmark, {report['mode']} mode, {report['started_at']}, "
        f"commit {report['git']['short']}"
        + (
            f" with uncommitted changes ({len(report['git']['uncommitted'])} paths)"
            if report["git"]["uncommitted"]
            else ""
        )
    )
    for key, value in report["machine"].items():  # type: ignore[attr-defined]
        print(f"  {key}: {value}")
    print()
    print(table(rows))
    print(
        f"\n{report['seconds']} s in all; ratio: time = gateway/baseline seconds (lower is "
        "better), throughput = gateway/baseline rate (higher is better); median of per-pair ratios"
    )
    if report["changed_during_run"]:
        print(
            f"warning: source files changed while the benchmark ran, so later scenarios may "
            f"have measured other code: {', '.join(report['changed_during_run'])}"
        )
    for number, load in loads.items():
        if load["other_share"] > DISTURBED:
            print(
                f"warning: during scenario {number} other processes on this machine used "
                f"{load['other_cpu_s']} CPU-s ({100 * load['other_share']:.0f} % of it); "
                f"its figures are disturbed: {load['cpu_s_by_process']}"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"samples written to {args.json}")


if __name__ == "__main__":
    main()
