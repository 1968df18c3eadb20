"""`python -m bench.compare COMMIT [--small N] [--rounds R] [--dir DIR]`: CPU per small
package, this tree against COMMIT, alternating in one run.

On a shared machine wall time says little, and two separate runs of `bench.run` are
taken under different loads; CPU-seconds per process, with the two versions run in
turn (A B, B A, ...) on the same rig, compare better. COMMIT's `gateway/` is unpacked
into a temporary folder (`git archive`) and run from there; both versions use the same
home, ledger and keys (the ledger's schema must be the same).

Each round, for each version:

- outbound: N files of 4 KiB dropped at once into a running `gateway run`, until all are
  delivered to the partner's sshd (scenario 3 of bench.run);
- inbound: N packages the partner sealed, fetched, opened and receipted by
  `gateway run --once` until the download folder is empty (scenario 5).

Printed: CPU ms per package of the gateway process alone, of its gpg children, of the
gpg-agents and of sshd (with its sftp-server), medians over rounds, and the median
per-round ratio new/old.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench.rig
from bench.inbound import build_set
from bench.measure import (
    REPO,
    become_subreaper,
    byte_compile,
    cpu_spent,
    median,
    processes,
    servers,
)
from bench.outbound import OLD, SMALL, delivered_count, forget_sealed, write_random
from bench.rig import Rig

Figures = dict[str, float]


def say(text: str) -> None:
    """Progress, on stderr."""
    print(text, file=sys.stderr, flush=True)


def outbound(rig: Rig, tree: Path, n: int, tag: str) -> Figures:
    """N small files through a running daemon started from `tree`; CPU ms per package."""
    bench.rig.REPO = tree
    names = [f"{tag}-{i:05d}.xml" for i in range(n)]
    for name in names:
        part = write_random(rig.spool / f"{name}.part", SMALL)
        os.utime(part, (time.time() - OLD,) * 2)
    before = delivered_count(rig)
    with rig.daemon() as daemon:
        procs = processes()
        for name in names:
            os.rename(rig.spool / f"{name}.part", rig.spool / name)
        deadline = time.monotonic() + 120 + n
        while delivered_count(rig) - before < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not deliver {n} packages in time")
            time.sleep(0.02)
        after = processes()
    was, now = procs[daemon.pid], after[daemon.pid]
    roles = {
        "gateway": now.own - was.own,
        "gpg": (now.cpu - now.own) - (was.cpu - was.own),
        **servers(cpu_spent(procs, after, rig.root)),
    }
    forget_sealed(rig)
    rig.clear(rig.server.upload)
    return {k: 1000 * v / n for k, v in roles.items()}


def inbound(rig: Rig, tree: Path, n: int, folder: Path) -> Figures:
    """N partner packages opened by `gateway run --once` started from `tree`."""
    bench.rig.REPO = tree
    for path in folder.iterdir():
        shutil.copy(path, rig.server.download)
    procs, cli = processes(), rig.cli_cpu_s.copy()
    while any(rig.server.download.glob("*.pgp")):
        rig.gateway_cli("run", "--once")
    roles = {
        "gateway": rig.cli_cpu_s["gateway"] - cli["gateway"],
        "gpg": rig.cli_cpu_s["gpg"] - cli["gpg"],
        **servers(cpu_spent(procs, processes(), rig.root)),
    }
    rig.clear(rig.server.upload, rig.home.inbound / bench.rig.PARTNER_ID)
    return {k: 1000 * v / n for k, v in roles.items()}


def report(title: str, runs: dict[str, list[Figures]]) -> None:
    """One table: each process's median ms per package, old and new, and new/old."""
    print(f"\n{title}: CPU ms per package, median of {len(runs['new'])} rounds")
    print(f"  {'process':12} {'old':>7} {'new':>7}  new/old (per round)")
    for role in [*runs["new"][0], "all"]:

        def value(f: Figures, role: str = role) -> float:
            return sum(f.values()) if role == "all" else f[role]

        ratios = [
            value(b) / value(a) for a, b in zip(runs["old"], runs["new"], strict=True) if value(a)
        ]
        old, new = median([value(f) for f in runs["old"]]), median([value(f) for f in runs["new"]])
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  {role:12} {old:7.2f} {new:7.2f}  {median(ratios) if ratios else 0:.2f} ({shown})")


def main() -> None:
    """Unpack COMMIT, run both versions in turn, print the tables."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("commit", help="the version to compare against, e.g. main")
    parser.add_argument("--small", type=int, default=300, help="packages per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each runs both versions)")
    parser.add_argument("--dir", type=Path, default=bench.rig.BASE,
                        help=f"the folder the rig is made in (default {bench.rig.BASE})")  # fmt: skip
    args = parser.parse_args()
    old = Path(tempfile.mkdtemp(prefix="gbold"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.commit, "gateway"],
                             capture_output=True, check=True)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    trees = {"old": old, "new": REPO}
    for tree in trees.values():
        byte_compile(tree)  # as installed: each process does not compile its modules anew
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # clean up the rig
    become_subreaper()  # the agents `run --once` stops are counted as ours (bench.measure)
    rig = Rig(say, base=args.dir)
    out: dict[str, list[Figures]] = {"old": [], "new": []}
    into: dict[str, list[Figures]] = {"old": [], "new": []}
    try:
        for r in range(args.rounds + 1):  # the first round warms up
            order = ["old", "new"] if r % 2 else ["new", "old"]
            for name in order:
                folder = rig.folder(f"cmp-{r}-{name}")
                build_set(rig, args.small, folder)
                o = outbound(rig, trees[name], args.small, f"r{r}{name}")
                i = inbound(rig, trees[name], args.small, folder)
                say(f"  round {r or 'warm-up'} {name}: outbound {sum(o.values()):.1f} ms, "
                    f"inbound {sum(i.values()):.1f} ms per package")  # fmt: skip
                if r:
                    out[name].append(o)
                    into[name].append(i)
    finally:
        rig.close()
        bench.rig.REPO = REPO
        shutil.rmtree(old, ignore_errors=True)
    print(f"bench.compare: {args.commit} (old) against this tree (new), {args.small} x 4 KiB, "
          f"{os.cpu_count()} cores")  # fmt: skip
    report("outbound, a burst into a running daemon", out)
    report("inbound, gateway run --once until the folder is empty", into)


if __name__ == "__main__":
    main()
