"""`python -m bench.profile DIR [--top N]`: summarise the profiles `bench.run` took.

`bench.run --cprofile DIR` leaves one cProfile file per process (`*.pstats`), of CPU
time per thread (`time.thread_time`), all threads merged: printed sorted by own CPU
and by CPU including callees.

py-spy samples each thread 250 times a second and leaves out idle ones (waiting on a
lock, a pipe, a socket or sleep), so a sample is a 4 ms slice of a thread running
Python or C code called from it. For each process kind (daemon, run, child) this
prints the CPU seconds by thread, then the functions that hold most samples including
their callees, and the innermost frames (where the time is actually spent).
"""

from __future__ import annotations

import argparse
import pstats
import re
from collections import Counter, defaultdict
from pathlib import Path

RATE = 250  # samples per second, as bench.rig asks py-spy for


def frame(text: str) -> str:
    """`Keyring.seal (gateway/adapters/gpg.py:300)` -> `Keyring.seal (gateway/adapters/gpg.py)`."""
    return re.sub(r":\d+\)$", ")", text)


def thread(text: str) -> str:
    """`thread (123): worker-2` -> `worker`; `Thread-374 (_copy_data)` -> `Thread (_copy_data)`."""
    name = text.split(": ", 1)[1] if ": " in text else "main"
    return re.sub(r"-\d+", "", name)


def summarise(files: list[Path], top: int) -> str:
    """The report for the raw files of one process kind."""
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            total += n
            threads[thread(frames[0])] += n
            for name in {frame(f) for f in frames[1:]}:
                inclusive[name] += n
            if len(frames) > 1:
                leaf[frame(frames[-1])] += n
    lines = [f"{len(files)} processes, {total / RATE:.1f} CPU-s of Python threads sampled"]
    lines += ["  by thread:"] + [
        f"    {n / RATE:7.2f} s {100 * n / total:5.1f} %  {name}"
        for name, n in threads.most_common()
    ]
    for title, counts in (("including callees", inclusive), ("innermost frame", leaf)):
        lines.append(f"  top {top} functions, {title}:")
        lines += [
            f"    {n / RATE:7.2f} s {100 * n / total:5.1f} %  {name}"
            for name, n in counts.most_common(top)
        ]
    return "\n".join(lines)


def main() -> None:
    """Print the summary of each process kind found in DIR."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("folder", type=Path, help="the --profile DIR of bench.run")
    parser.add_argument("--top", type=int, default=25, help="how many functions to list")
    args = parser.parse_args()
    kinds: defaultdict[str, list[Path]] = defaultdict(list)
    for path in sorted(args.folder.glob("*.txt")):
        kinds[path.stem.rsplit("-", 1)[0]].append(path)
    for kind, files in kinds.items():
        print(f"== {kind}\n{summarise(files, args.top)}\n")
    for path in sorted(args.folder.glob("*.pstats")):
        print(f"== {path.name}: CPU seconds (time.thread_time), all threads")
        stats = pstats.Stats(str(path)).strip_dirs()
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
