"""Timing, statistics, the result rows and the machine they were measured on."""

from __future__ import annotations

import compileall
import contextlib
import ctypes
import dataclasses
import math
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

Kind = Literal["time", "throughput", "value"]


@dataclasses.dataclass(frozen=True)
class Target:
    """What a row should reach: `ratio` or the gateway figure itself, `<=` or `>=` a bound."""

    of: Literal["ratio", "gateway"]
    op: Literal["<=", ">="]
    bound: float
    unit: str = ""

    def met(self, row: Row) -> bool | None:
        """Whether `row` meets this target; None when the figure is missing."""
        value = row.ratio if self.of == "ratio" else row.gateway
        if value is None:
            return None
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def text(self) -> str:
        """As shown in the table, e.g. `ratio <= 1.0` or `<= 100 MiB`."""
        bound = f"{self.bound:g}{' ' + self.unit if self.unit else ''}"
        return f"ratio {self.op} {bound}" if self.of == "ratio" else f"{self.op} {bound}"


@dataclasses.dataclass
class Row:
    """One line of the result table, and everything measured for it.

    `kind` says what `ratio` means: "time", gateway time / baseline time (lower is
    better); "throughput", gateway rate / baseline rate (higher is better); "value",
    no baseline.
    """

    scenario: str
    unit: str
    gateway: float | None
    baseline: float | None = None
    ratio: float | None = None
    kind: Kind = "value"
    target: Target | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    cpu_ratio: float | None = None  # the benchmark's CPU-seconds, gateway run / baseline run

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None without a target or a figure)."""
        return self.target.met(self) if self.target else None

    def as_json(self) -> dict[str, Any]:
        """A plain dict for the JSON report."""
        return {
            "scenario": self.scenario,
            "unit": self.unit,
            "gateway": self.gateway,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "ratio_kind": self.kind,
            "target": self.target.text() if self.target else None,
            "met": self.met,
            "cpu_ratio": self.cpu_ratio,
            "details": self.details,
        }


def cpu_busy() -> float:
    """CPU-seconds the whole machine has been busy since boot (user, system, interrupts; not
    idle, I/O wait or steal): the difference over a run is all the CPU that run cost."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Proc:
    """One process as /proc shows it: what it is, its parent, and its CPU so far."""

    name: str
    state: str  # R, S, D, Z...
    ppid: int
    cpu: float  # seconds: its own and its reaped children's
    argv: bytes
    own: float = 0.0  # seconds: its own alone (user + system)


def byte_compile(tree: Path) -> None:
    """Compile the gateway's modules in `tree` to bytecode, as installing it does.

    Where `PYTHONDONTWRITEBYTECODE` is set (this machine sets it), an editable checkout
    never gets its `__pycache__`, and every gateway process compiled each of its modules
    from source when it started: 0.30 against 0.26 CPU-s for a `run --once` with nothing
    to do (medians of 8 alternating runs).
    """
    compileall.compile_dir(tree / "gateway", quiet=1)


def become_subreaper() -> None:
    """Adopt our orphans (Linux PR_SET_CHILD_SUBREAPER) instead of init.

    gpg-agent detaches from the gpg or gateway that started it; as init's child, the CPU
    it used would be counted, once it is stopped, as init's and so as another user's.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap_agents(found: dict[int, Proc] | None = None) -> None:
    """Collect the stopped gpg-agents we adopted, so that their CPU is counted as ours."""
    for pid, proc in (found or _read()).items():
        if proc.ppid == os.getpid() and proc.state == "Z" and proc.name == "gpg-agent":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def processes() -> dict[int, Proc]:
    """Every process now, by pid; then our stopped gpg-agents are collected.

    A stopped agent is in the result, as a zombie that still shows its CPU (counted as a
    gpg-agent's); the next snapshot finds that CPU in ours, as reaped children's.
    """
    found = _read()
    reap_agents(found)
    return found


def _read() -> dict[int, Proc]:
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")].split("/")[0]
        fields = stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = Proc(
            name,
            fields[0],
            int(fields[1]),
            sum(int(f) for f in fields[11:15]) / tick,
            argv,
            sum(int(f) for f in fields[11:13]) / tick,
        )
    return found


def kind(pid: int, procs: dict[int, Proc], root: Path) -> str:
    """What `pid` is to the benchmark: ours (by ancestry, or naming our folder), kernel, other."""
    proc, seen = procs[pid], pid
    if str(root).encode() in proc.argv:
        return proc.name  # a gpg-agent or sshd of ours, detached from us
    while seen in procs:
        if seen == os.getpid():
            if pid == seen:
                return "bench.run (+ the processes it has reaped)"
            argv = proc.argv.split(b"\0")
            if proc.name.startswith("python") and len(argv) > 2 and argv[1] == b"-m":
                return f"python -m {argv[2].decode(errors='replace')} (+ reaped children: gpg)"
            return proc.name
        if seen == 2:
            return f"kernel: {proc.name}"
        seen = procs[seen].ppid
    return f"other: {proc.name}"


def cpu_spent(before: dict[int, Proc], after: dict[int, Proc], root: Path) -> dict[str, float]:
    """CPU-seconds by kind of process between two `processes()` snapshots, largest first.

    A process that ended in between is counted in the ancestor that reaped it, whose
    children's time then holds all of that process's CPU; the part it had already used at
    the first snapshot is taken off that ancestor again.
    """
    spent: dict[str, float] = {}
    for pid, proc in after.items():
        earlier = before.get(pid)
        cpu = proc.cpu - (earlier.cpu if earlier and earlier.name == proc.name else 0.0)
        name = kind(pid, after, root)
        spent[name] = spent.get(name, 0.0) + cpu
    for pid, proc in before.items():
        if pid in after and after[pid].name == proc.name:
            continue
        reaper = proc.ppid
        while reaper not in after and reaper in before:
            reaper = before[reaper].ppid
        name = kind(reaper, after, root) if reaper in after else kind(pid, before, root)
        spent[name] = spent.get(name, 0.0) - proc.cpu
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def ours(spent: dict[str, float]) -> float:
    """CPU-seconds used by the benchmark's processes (not others', not the kernel's)."""
    return sum(c for n, c in spent.items() if not n.startswith(("other: ", "kernel: ")))


def servers(spent: dict[str, float]) -> dict[str, float]:
    """The CPU-seconds of the partner's side and the keyrings' agents, from `cpu_spent`."""
    return {
        "gpg-agent": spent.get("gpg-agent", 0.0),
        "sshd": spent.get("sshd", 0.0) + spent.get("sftp-server", 0.0),
    }


def exit_cpu(pid: int) -> tuple[float, float]:
    """Wait for child `pid` to exit, without reaping it; its own CPU-seconds and those of
    the children it reaped, read from the zombie's /proc entry. Reap it afterwards."""
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / tick
    return own, (int(fields[13]) + int(fields[14])) / tick


def other_load(spent: dict[str, float]) -> float:
    """CPU-seconds used by processes that are not the benchmark's nor the kernel's."""
    return sum(cpu for name, cpu in spent.items() if name.startswith("other: "))


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile: with 20 samples p99 is the largest of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def alternate(
    runs: dict[str, Callable[[], float]],
    repeats: int,
    warmups: int = 1,
    say: Callable[[str], None] = print,
    warmup: dict[str, Callable[[], float]] | None = None,
    cpu: dict[str, list[float]] | None = None,
    root: Path | None = None,
) -> dict[str, list[float]]:
    """Run each callable in turn (A B A B ..., or A B C A B C ...); their seconds after warm-up.

    Each callable does its own set-up and clean-up and returns only the seconds it timed.
    `warmup`, if given, is run instead of `runs` for the warm-up rounds (a smaller load).
    With `cpu` and `root` (the rig's folder), the CPU-seconds all the benchmark's
    processes used over each whole call (set-up included) go into `cpu` by name.
    """
    seconds: dict[str, list[float]] = {name: [] for name in runs}

    def call(name: str, run: Callable[[], float], timed: bool) -> float:
        if cpu is None or root is None:
            return run()
        before = processes()
        taken = run()
        if timed:
            cpu.setdefault(name, []).append(ours(cpu_spent(before, processes(), root)))
        return taken

    for i in range(warmups + repeats):
        now = (warmup or runs) if i < warmups else runs
        taken = {name: call(name, run, i >= warmups) for name, run in now.items()}
        label = "warm-up" if i < warmups else f"run {i - warmups + 1}/{repeats}"
        say(f"    {label}: " + ", ".join(f"{n} {s:.3f} s" for n, s in taken.items()))
        if i >= warmups:
            for name, value in taken.items():
                seconds[name].append(value)
    return seconds


def cpu_ratio(
    cpu: dict[str, list[float]], ours: str = "gateway", theirs: str = "baseline"
) -> float:
    """The median of the per-pair ratios of CPU-seconds, `ours` over `theirs` (lower is better)."""
    return median([a / b for a, b in zip(cpu[ours], cpu[theirs], strict=True)])


def time_row(
    scenario: str, ours: list[float], theirs: list[float], target: Target | None, **details: Any
) -> Row:
    """A row of seconds: medians, and the median of the per-pair ratios gateway/baseline."""
    return Row(
        scenario,
        "s",
        median(ours),
        median(theirs),
        median([a / b for a, b in zip(ours, theirs, strict=True)]),
        "time",
        target,
        {"gateway_s": ours, "baseline_s": theirs, **details},
    )


def rate_row(
    scenario: str,
    work: float,
    unit: str,
    ours: list[float],
    theirs: list[float],
    target: Target | None,
    **details: Any,
) -> Row:
    """A row of rates (`work` per second): medians, and the median per-pair rate ratio."""
    return Row(
        scenario,
        unit,
        median([work / s for s in ours]),
        median([work / s for s in theirs]),
        median([b / a for a, b in zip(ours, theirs, strict=True)]),
        "throughput",
        target,
        {"work": work, "gateway_s": ours, "baseline_s": theirs, **details},
    )


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = 3 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:.{digits}f} {unit}".strip()


def table(rows: Sequence[Row]) -> str:
    """The result table as fixed-width text (also valid Markdown)."""
    head = [
        "scenario",
        "gateway (median)",
        "baseline (median)",
        "ratio",
        "target",
        "met?",
        "CPU-s ratio",
    ]
    body = []
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f} ({r.kind})"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        body.append(
            [
                r.scenario,
                _fmt(r.gateway, r.unit),
                _fmt(r.baseline, r.unit),
                ratio,
                r.target.text() if r.target else "-",
                met,
                "-" if r.cpu_ratio is None else f"{r.cpu_ratio:.3f}",
            ]
        )
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule, *(line(b) for b in body)])


def _command_line(argv: list[str], pattern: str = "") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not found"
    text = (done.stdout + done.stderr).strip()
    found = re.search(pattern, text) if pattern else None
    return found.group(0) if found else text.splitlines()[0] if text else "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """CPU, cores, memory, disk and the versions of everything measured."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for text in f:
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(t for t in f if t.startswith("MemTotal")).split()[1])
    flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags": [f for f in ("aes", "vaes", "sha_ni", "avx2") if f" {f}" in flags],
        "memory_gib": round(mem_kib / MIB, 1),
        "kernel": platform.release(),
        "os": _command_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "disk_free_gib": round(shutil.disk_usage(tempfile.gettempdir()).free / 1024**3, 1),
        "python": platform.python_version(),
        "gpg": _command_line(["gpg", "--version"], r"gpg \(GnuPG\) \S+"),
        "libgcrypt": _command_line(["gpg", "--version"], r"libgcrypt \S+"),
        "openssh": _command_line(["ssh", "-V"]),
        "paramiko": _version("paramiko"),
        "cryptography": _version("cryptography"),
        "python-gnupg": _version("python-gnupg"),
        "sqlite": sqlite3.sqlite_version,
        "sqlite-utils": _version("sqlite-utils"),
        "watchdog": _version("watchdog"),
        "executable": sys.executable,
    }


def filesystem(folder: Path) -> dict[str, Any]:
    """Where the rig lives: the file system's type and what making a file there costs.

    Read once the run is over (read before, its own churn would slow the run), after
    3,000 more files and folders were made and removed, as a run's packages leave it.
    ext4 without a journal (this machine's root) passes over each inode freed in the last
    30 s to 5 min, one by one, on every allocation (`recently_deleted` in
    `find_inode_bit`): each file or folder made after such churn cost 0.2 - 0.9 ms of
    kernel CPU here, against 0.01 - 0.03 ms on a journaled ext4 (docs/performance.md).
    """
    mount = max(
        (line.split() for line in Path("/proc/mounts").read_text().splitlines()),
        key=lambda m: len(m[1]) if str(folder).startswith(m[1]) else -1,
    )
    probe = Path(tempfile.mkdtemp(prefix="fs", dir=folder))
    for n in range(3000):
        (probe / str(n)).mkdir()
        (probe / str(n) / "f").touch()
        (probe / str(n) / "f").unlink()
        (probe / str(n)).rmdir()
    start = time.process_time()
    for n in range(300):
        (probe / f"new{n}").mkdir()
        (probe / f"new{n}" / "f").touch()
    cost = (time.process_time() - start) / 600
    shutil.rmtree(probe)
    return {"folder": str(folder), "device": mount[0], "type": mount[2],
            "ms_cpu_per_file_made_after_churn": round(1000 * cost, 3)}  # fmt: skip


def sources() -> dict[str, float]:
    """The modification time of every source file measured: a change during a run shows."""
    return {
        str(path.relative_to(REPO)): path.stat().st_mtime
        for folder in ("gateway", "bench", "tests")
        for path in (REPO / folder).rglob("*.py")
    }


def git() -> dict[str, Any]:
    """The commit measured, and the paths where the working tree differs from it."""

    def out(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout

    changed = [line[3:] for line in out("status", "--porcelain").splitlines()]
    return {
        "commit": out("rev-parse", "HEAD").strip(),
        "short": out("rev-parse", "--short", "HEAD").strip(),
        "uncommitted": changed,
    }
