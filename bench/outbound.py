"""Outbound scenarios: one large package, the SFTP leg alone, many small ones, latency."""

from __future__ import annotations

import json
import os
import resource
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.measure import (
    MIB,
    REPO,
    Row,
    Target,
    alternate,
    cpu_busy,
    cpu_ratio,
    cpu_spent,
    median,
    percentile,
    processes,
    rate_row,
    servers,
    time_row,
)
from bench.rig import PARTNER_ID, Rig
from gateway.adapters.sessions import KEEP_SECONDS
from gateway.adapters.sftp import FALLBACK_WRITE_BYTES, Endpoint, SftpPartner, load_key

Say = Callable[[str], None]
SMALL = 4096
OLD = 3600.0  # seconds: dropped files were written long ago, so nothing waits to settle


def cpu_seconds(who: int) -> float:
    """User + system CPU-seconds of this process (RUSAGE_SELF, all threads) or of its reaped
    children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def write_random(path: Path, size: int) -> Path:
    """`size` random bytes (incompressible, like the encrypted or zipped files sent)."""
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
    return path


def size_text(size: int) -> str:
    """1073741824 -> '1 GiB', 134217728 -> '128 MiB'."""
    return f"{size // 1024**3} GiB" if size % 1024**3 == 0 else f"{size // MIB} MiB"


def delivered_count(rig: Rig) -> int:
    """How many outbound packages the ledger holds as delivered (read-only, no lock taken)."""
    with sqlite3.connect(f"file:{rig.home.ledger}?mode=ro", uri=True) as db:
        row = db.execute("SELECT count(*) FROM packages WHERE state = 'delivered'").fetchone()
    return int(row[0])


def forget_sealed(rig: Rig) -> None:
    """Remove what deliveries leave behind (sealed files kept until a receipt; uploads)."""
    rig.clear(rig.home.sealed, rig.server.upload)


def daemon_events(log: Path, offset: int) -> list[tuple[float, str, str]]:
    """(epoch seconds, action, package id) of every ledger event the daemon logged after `offset`."""
    found = []
    with log.open("rb") as f:
        f.seek(offset)
        for raw in f:
            fields = raw.decode(errors="replace").split()
            if len(fields) < 5 or fields[2] != "INFO":
                continue
            try:
                at = datetime.strptime(f"{fields[0]} {fields[1]}", "%Y-%m-%d %H:%M:%S,%f")
            except ValueError:
                continue
            found.append((at.timestamp(), fields[3], fields[4]))
    return found


def median_steps(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The median seconds of each step that `bench.child` timed, over its runs."""
    names = {name for run in runs for name in run["steps"]}
    return {
        name: median([run["steps"].get(name, {"s": 0.0})["s"] for run in runs])
        for name in sorted(names)
    }


# -- 1. one large package ------------------------------------------------------------------


def run_child(rig: Rig, source: Path, memory: bool = False) -> dict[str, Any]:
    """`bench.child outbound` in its own process; what it reports, and the peak memory of
    the gateway (its Python process plus its largest gpg child)."""
    start = time.perf_counter()
    argv = [
        sys.executable,
        "-m",
        "bench.child",
        "outbound",
        str(rig.home.root),
        str(source),
        PARTNER_ID,
        *(["--memory"] if memory else []),
    ]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) as proc:
        rig.spy(proc, "child")
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench.child failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    if not result["delivered"]:
        raise RuntimeError(
            f"bench.child left the package {result['state']}: {err.decode()[-2000:]}"
        )
    result["wall_s"] = time.perf_counter() - start
    result["gpg_peak_mib"] = max(result["children_peak_mib"].values(), default=0.0)
    result["tree_peak_mib"] = result["peak_mib"] + result["gpg_peak_mib"]
    return result


def large_package(rig: Rig, size: int, repeats: int, say: Say) -> list[Row]:
    """Scenario 1: dropped to delivered, gateway vs `gpg --sign --encrypt` then `sftp put`."""
    folder = rig.folder("large")
    source = write_random(folder / "evidence.bin", size)
    sealed = folder / "evidence.bin.pgp"
    runs: list[dict[str, Any]] = []
    split: list[dict[str, float]] = []

    def ours() -> float:
        runs.append(run_child(rig, source))
        forget_sealed(rig)
        return float(runs[-1]["seconds"])

    def theirs() -> float:
        start = time.perf_counter()
        rig.run([*rig.gpg_seal(), "--output", str(sealed), str(source)])
        middle = time.perf_counter()
        rig.run(rig.sftp(), f"put {sealed} upload/{sealed.name}\n")
        end = time.perf_counter()
        split.append({"gpg_s": middle - start, "sftp_s": end - middle})
        sealed.unlink()
        forget_sealed(rig)
        return end - start

    spent: dict[str, list[float]] = {}
    seconds = alternate(
        {"gateway": ours, "baseline": theirs}, repeats, say=say, cpu=spent, root=rig.root
    )
    counted = runs[-repeats:]
    phases = {name: median([r["phases"][name] for r in counted]) for name in counted[0]["phases"]}
    rows = [
        time_row(
            f"1. one {size_text(size)} package, drop to delivered",
            seconds["gateway"],
            seconds["baseline"],
            Target("ratio", "<=", 1.1),
            gateway_phases_s=phases,
            gateway_steps_s=median_steps(counted),
            gateway_wall_with_startup_s=[r["wall_s"] for r in counted],
            baseline_split_s=split[-repeats:],
            gateway_mib_s=size / MIB / median(seconds["gateway"]),
            baseline_mib_s=size / MIB / median(seconds["baseline"]),
            cpu_s=spent,
        ),
    ]
    rows[0].cpu_ratio = cpu_ratio(spent)
    small = write_random(folder / "notice.bin", 10 * MIB)
    # Memory runs apart from the timed ones: sampling gpg's memory costs a little CPU.
    small_runs = [run_child(rig, small, memory=True) for _ in range(3)]
    large_runs = [run_child(rig, source, memory=True)]
    forget_sealed(rig)
    peak_small = median([r["tree_peak_mib"] for r in small_runs])
    peak_large = median([r["tree_peak_mib"] for r in large_runs])

    def rss(r: dict[str, Any]) -> dict[str, Any]:
        return {
            "python_plus_gpg_mib": r["tree_peak_mib"],
            "python_mib": r["peak_mib"],
            "python_mib_after": r["peak_mib_after"],
            "children_mib": r["children_peak_mib"],
        }

    limit = Target("gateway", "<=", 100, "MiB")
    return [
        *rows,
        Row(
            "1. peak RSS, 10 MiB package",
            "MiB",
            peak_small,
            target=limit,
            details={"runs": [rss(r) for r in small_runs]},
        ),
        Row(
            f"1. peak RSS, {size_text(size)} package",
            "MiB",
            peak_large,
            target=limit,
            details={"runs": [rss(r) for r in large_runs]},
        ),
        Row(
            f"1. peak RSS growth, 10 MiB -> {size_text(size)}",
            "MiB",
            peak_large - peak_small,
            target=Target("gateway", "<=", 10, "MiB (flat)"),
        ),
    ]


# -- 2. the SFTP leg alone ------------------------------------------------------------------


def sftp_leg(rig: Rig, size: int, repeats: int, say: Say) -> list[Row]:
    """Scenario 2: `SftpPartner.put_atomic` (connect included) vs OpenSSH `sftp put`."""
    source = write_random(rig.folder("leg") / "leg.bin", size)
    s = rig.server
    endpoint = Endpoint(s.host, s.port, s.user, "upload", "download")
    used: dict[str, int] = {}
    cpu: dict[str, list[float]] = {"gateway": [], "openssh": [], "gateway-32k": []}

    def put(request: int | None) -> float:
        name = "gateway" if request is None else "gateway-32k"
        start, client = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF)
        with SftpPartner(
            endpoint, load_key(rig.home.ssh_identity, None), rig.home.known_hosts, 15, 60
        ) as sftp:
            if request is not None:
                sftp._write_bytes = request  # as before gateway/adapters/sftp.py asked the server
            sftp.put_atomic(source, "leg.bin", "unused: the target is not there yet")
            used[name] = sftp.write_bytes()
        end = time.perf_counter()
        cpu[name].append(1000 * (cpu_seconds(resource.RUSAGE_SELF) - client) / (size / MIB))
        rig.clear(rig.server.upload)
        return end - start

    def theirs() -> float:
        start, client = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
        rig.run(rig.sftp(), f"put {source} upload/leg.bin\n")
        end = time.perf_counter()
        cpu["openssh"].append(
            1000 * (cpu_seconds(resource.RUSAGE_CHILDREN) - client) / (size / MIB)
        )
        rig.clear(rig.server.upload)
        return end - start

    runs = {
        "gateway": lambda: put(None),
        "openssh": theirs,
        "gateway-32k": lambda: put(FALLBACK_WRITE_BYTES),
    }
    spent: dict[str, list[float]] = {}
    seconds = alternate(runs, repeats, say=say, cpu=spent, root=rig.root)
    mib = size / MIB
    target = Target("ratio", ">=", 0.8)
    rows = [
        rate_row(
            f"2. SFTP leg {size_text(size)}, put_atomic vs sftp put",
            mib,
            "MiB/s",
            seconds["gateway"],
            seconds["openssh"],
            target,
            write_request_bytes=used["gateway"],
            client_cpu_ms_per_mib={k: median(v[-repeats:]) for k, v in cpu.items()},
        ),
        rate_row(
            "2. same, 32 KiB requests (before this change)",
            mib,
            "MiB/s",
            seconds["gateway-32k"],
            seconds["openssh"],
            target,
            write_request_bytes=used["gateway-32k"],
        ),
    ]
    for row, name in zip(rows, ("gateway", "gateway-32k"), strict=True):
        row.cpu_ratio = cpu_ratio(spent, name, "openssh")
        row.details["cpu_s"] = {name: spent[name], "openssh": spent["openssh"]}
    return rows


# -- 3. many small packages through the daemon ---------------------------------------------


def many_small(
    rig: Rig, count: int, repeats: int, say: Say, warm: int, diagnose: bool
) -> list[Row]:
    """Scenario 3: `count` files dropped at once into a running daemon, to all delivered.

    The warm-up drops `warm` files; with `diagnose`, one more drop runs the daemon with
    every step timed (`bench.child daemon`).
    """
    names = [f"notice-{i:05d}.xml" for i in range(count)]
    sources = {n: rig.folder(f"small-{n}") for n in {count, warm}}
    for n, folder in sources.items():
        for name in names[:n]:
            write_random(folder / name, SMALL)
    out = rig.folder("small-out")
    log = rig.root / "daemon.log"
    timelines: list[dict[str, float]] = []
    cpu: dict[str, list[float]] = {"gateway": [], "gateway_daemon_tree": [], "baseline": []}
    by_process: list[dict[str, float]] = []
    split: dict[str, list[dict[str, float]]] = {"gateway": [], "baseline": []}

    def drop(n: int, argv: list[str] | None = None) -> float:
        for name in names[:n]:  # written (under a temporary name) before the clock starts
            part = rig.spool / f"{name}.part"
            part.write_bytes((sources[n] / name).read_bytes())
            os.utime(part, (time.time() - OLD,) * 2)
        before = delivered_count(rig)
        offset = log.stat().st_size if log.exists() else 0
        with rig.daemon(argv) as daemon:
            wall, start, busy, procs = time.time(), time.perf_counter(), cpu_busy(), processes()
            for name in names[:n]:
                os.rename(rig.spool / f"{name}.part", rig.spool / name)
            deadline = start + 120 + n
            while delivered_count(rig) - before < n:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the daemon did not deliver {n} packages in time")
                time.sleep(0.02)
            seconds = time.perf_counter() - start
            cpu["gateway"].append((cpu_busy() - busy) / n)
            after = processes()
            spent = cpu_spent(procs, after, rig.root)
            by_process.append({name: 1000 * s / n for name, s in spent.items() if s > 0.005})
            was, now = procs[daemon.pid], after[daemon.pid]
            roles = {
                "gateway": now.own - was.own,
                "gpg": (now.cpu - now.own) - (was.cpu - was.own),  # its children, reaped
                **servers(spent),
            }
            if argv is None:  # not the instrumented pass
                split["gateway"].append({k: 1000 * v / n for k, v in roles.items()})
        cpu["gateway_daemon_tree"].append(rig.daemon_cpu_s / n)
        timelines.append(_timeline(daemon_events(log, offset), wall))
        forget_sealed(rig)
        return seconds

    seal = shlex.join(rig.gpg_seal())
    put = shlex.join(rig.sftp())
    loop = f'for f in "$1"/*; do {seal} --output "$0/${{f##*/}}.pgp" "$f" || exit 1; done'
    batch = f'printf "put %s/* upload/\\n" "$0" | {put}'

    def theirs(n: int) -> float:
        start, busy, procs = time.perf_counter(), cpu_busy(), processes()
        gpg = rig.run(["bash", "-c", loop, str(out), str(sources[n])])
        sftp = rig.run(["bash", "-c", batch, str(out)])
        seconds = time.perf_counter() - start
        cpu["baseline"].append((cpu_busy() - busy) / n)
        roles = {"gpg": gpg, "sftp + ssh": sftp, **servers(cpu_spent(procs, processes(), rig.root))}
        split["baseline"].append({k: 1000 * v / n for k, v in roles.items()})
        rig.clear(out, rig.server.upload)
        return seconds

    spent: dict[str, list[float]] = {}
    seconds = alternate(
        {"gateway": lambda: drop(count), "baseline": lambda: theirs(count)},
        repeats,
        say=say,
        warmup={"gateway": lambda: drop(warm), "baseline": lambda: theirs(warm)},
        cpu=spent,
        root=rig.root,
    )
    details: dict[str, Any] = {
        "daemon_timeline_s": {
            k: median([t[k] for t in timelines[-repeats:]]) for k in timelines[-1]
        },
        "cpu_ms_per_package": {k: 1000 * median(v[-repeats:]) for k, v in cpu.items()},
        "cpu_ms_per_package_by_process_last_run": by_process[-1],
        "cpu_ms_per_package_split": {k: v[-repeats:] for k, v in split.items()},
        "cpu_s": spent,
    }
    if diagnose:
        say("    once more with every step timed (bench.child daemon)")
        steps = rig.root / "daemon-steps.json"
        argv = [sys.executable, "-m", "bench.child", "daemon", str(rig.home.root), str(steps)]
        details["instrumented_run_s"] = drop(count, argv)
        details["instrumented_steps"] = json.loads(steps.read_text())["steps"]
    row = rate_row(
        f"3. {count} x 4 KiB dropped at once, daemon vs gpg loop + sftp",
        count,
        "files/s",
        seconds["gateway"],
        seconds["baseline"],
        Target("ratio", ">=", 1.8),
        **details,
    )
    row.cpu_ratio = cpu_ratio(spent)
    return [row, *split_rows("3.", split, repeats, Target("gateway", "<=", 3, "ms"))]


def split_rows(
    number: str, split: dict[str, list[dict[str, float]]], repeats: int, own: Target
) -> list[Row]:
    """Rows of CPU ms per package by process, gateway and baseline side by side (medians
    over the timed runs), and their sum with the median per-pair ratio."""
    ours, theirs = split["gateway"][-repeats:], split["baseline"][-repeats:]
    rows = []
    for role in dict.fromkeys([*ours[0], *theirs[0]]):
        mine = [r[role] for r in ours if role in r]
        other = [r[role] for r in theirs if role in r]
        what = {"gateway": "gateway process (alone)", "gpg": "gpg (baseline: bash + gpg)"}
        rows.append(
            Row(
                f"{number} CPU per package: {what.get(role, role)}",
                "ms",
                median(mine) if mine else None,
                median(other) if other else None,
                target=own if role == "gateway" else None,
            )
        )
    totals = [sum(r.values()) for r in ours], [sum(r.values()) for r in theirs]
    rows.append(
        Row(
            f"{number} CPU per package: all of the above",
            "ms",
            median(totals[0]),
            median(totals[1]),
            median([a / b for a, b in zip(*totals, strict=True)]),
            "time",
        )
    )
    return rows


def _timeline(events: list[tuple[float, str, str]], start: float) -> dict[str, float]:
    """When, after the drop, the daemon had taken in, sealed and delivered everything."""

    def at(action: str, pick: Callable[[list[float]], float]) -> float:
        return pick([when for when, what, _ in events if what == action] or [start]) - start

    return {
        f"{edge}_{action}": at(action, pick)
        for action in ("intake", "seal", "deliver")
        for edge, pick in (("first", min), ("last", max))
    }


# -- 4. latency of one file into an idle daemon ---------------------------------------------


def latency(rig: Rig, samples: int, say: Say) -> list[Row]:
    """Scenario 4: one file renamed into an idle daemon's spool until it is on the partner."""
    log = rig.root / "daemon.log"
    upload = rig.server.upload
    seconds: list[float] = []
    phases: list[dict[str, float]] = []
    offset = log.stat().st_size if log.exists() else 0
    with rig.daemon():
        for i in range(samples + 1):  # the first is a warm-up
            name = f"latency-{i:03d}.xml"
            part = write_random(rig.spool / f"{name}.part", SMALL)
            os.utime(part, (time.time() - OLD,) * 2)
            before, seen = delivered_count(rig), set(os.listdir(upload))
            time.sleep(KEEP_SECONDS + 1.5)  # idle: the daemon has closed the last session
            wall, start = time.time(), time.perf_counter()
            os.rename(part, rig.spool / name)
            while not [n for n in os.listdir(upload) if not n.startswith(".") and n not in seen]:
                if time.perf_counter() - start > 60:
                    raise RuntimeError("a package took more than a minute to arrive")
                time.sleep(0.001)
            taken = time.perf_counter() - start
            while delivered_count(rig) == before:  # recorded: the daemon is idle again
                time.sleep(0.01)
            events = [e for e in daemon_events(log, offset) if e[0] >= wall - 0.001]
            offset = log.stat().st_size
            if i:
                seconds.append(taken)
                phases.append(_phases(events, wall))
            say(f"    sample {i}: {taken:.3f} s" + ("" if i else " (warm-up)"))
    forget_sealed(rig)
    detail = {
        "samples_s": seconds,
        "phases_median_s": {k: median([p[k] for p in phases]) for k in phases[0]},
    }
    return [
        Row(
            "4. latency, idle daemon, p50",
            "s",
            percentile(seconds, 50),
            target=Target("gateway", "<=", 0.5, "s"),
            details=detail,
        ),
        Row(
            f"4. latency, idle daemon, p99 (n={samples})",
            "s",
            percentile(seconds, 99),
            target=Target("gateway", "<=", 2, "s"),
        ),
    ]


def _phases(events: list[tuple[float, str, str]], start: float) -> dict[str, float]:
    """Rename -> intake -> seal -> deliver.attempt -> deliver, from the daemon's log (ms)."""
    at = {what: when for when, what, _ in events}
    marks = ["intake", "seal", "deliver.attempt", "deliver"]
    times = [start] + [at.get(m, start) for m in marks]
    names = [
        "rename -> intake recorded",
        "intake -> sealed",
        "sealed -> upload starts",
        "upload -> delivered recorded",
    ]
    return {n: b - a for n, a, b in zip(names, times, times[1:], strict=False)}
