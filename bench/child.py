"""The gateway's own code in a process of its own, with the time of each step added up.

    python -m bench.child outbound HOME SOURCE PARTNER [--memory]  # drop to delivered
    python -m bench.child once HOME          # what `gateway run --once` does
    python -m bench.child daemon HOME OUT    # what `gateway run` does, until SIGTERM

`outbound` copies SOURCE into the partner's outbound spool folder under a temporary name
(not timed), then drops it as an upstream system does (a rename), takes it in
(`Intake.move_in` and `Intake.record`, what the daemon does with dropped files), seals it (`Steps.seal`,
which uploads a large package beside gpg) and, if it is not delivered yet, delivers it
(`Steps.turn`, no poll). It prints one JSON line: the seconds from the drop to
the ledger's `delivered`, the seconds spent in each step, and the peak memory of the process (and, with --memory, of its gpg
children). `once` and `daemon` run `Gateway.run_once()` and `Daemon.run()` as the CLI does, and report the seconds in each step (`daemon` into OUT,
summed over its worker threads, so the sums exceed the wall time). The steps are
timed by wrapping the functions the gateway calls; nothing in the gateway is changed.
"""

from __future__ import annotations

import atexit
import cProfile
import functools
import json
import os
import pstats
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.adapters import logs
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.sftp import SftpPartner
from gateway.app.gateway import Gateway
from gateway.core.lifecycle import State
from gateway.pipeline import accept as inbound
from gateway.pipeline import collect as poll
from gateway.pipeline import sealing
from gateway.pipeline.daemon import Daemon
from gateway.pipeline.steps import Steps

#: With this set to a folder, each child profiles its CPU there (`bench.run --cprofile`).
PROFILE_ENV = "BENCH_CPROFILE"
spent: Counter[str] = Counter()
calls: Counter[str] = Counter()
_lock = threading.Lock()


def timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func`, adding the seconds and the count of its calls under `name`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            with _lock:
                spent[name] += time.perf_counter() - start
                calls[name] += 1

    return wrapper


#: (owner, attribute, step name): what is timed. Nested steps are named inside their parent.
STEPS: tuple[tuple[Any, str, str], ...] = (
    (Keyring, "key", "gpg --list-keys (key checks)"),
    (Keyring, "seal", "Keyring.seal (key checks + gpg sign+encrypt)"),
    (Keyring, "open_message", "Keyring.open_message (gpg decrypt+verify)"),
    (Keyring, "sign_clear", "Keyring.sign_clear (audit checkpoint)"),
    (sealing, "publish", "seal: publish (fsync, rename, fsync)"),
    (sealing.Sealer, "erase_plaintext", "seal: erase plaintext (rmtree)"),
    (SftpPartner, "_connect", "SSH connect + login"),
    (SftpPartner, "put_all", "SftpPartner.put_all (small files together, the rest one by one)"),
    (SftpPartner, "put_atomic", "SftpPartner.put_atomic"),
    (SftpPartner, "place", "SftpPartner.place (stat, rename)"),
    (SftpPartner, "list_download", "SftpPartner.list_download"),
    (SftpPartner, "fetch_all", "SftpPartner.fetch_all (small files together, the rest one by one)"),
    (SftpPartner, "fetch", "SftpPartner.fetch"),
    (SftpPartner, "remove_downloads", "SftpPartner.remove_downloads"),
    (inbound, "unpack", "inbound: unpack the tar"),
    (inbound, "sha256_file", "inbound: sha256 of the fetched file"),
    (inbound.Accept, "_deliver", "inbound: deliver to spool/inbound (fsyncs)"),
    (inbound.Accept, "_receipt_out", "inbound: our receipt (Keyring.seal, publish)"),
    (poll, "sha256_file", "poll: sha256 of a receipt"),
    (Ledger, "insert", "ledger: insert"),
    (Ledger, "transition", "ledger: transition (alone or in a group)"),
    (Ledger, "note", "ledger: note (alone or in a group)"),
    (Ledger, "record", "ledger: record (alone or in a group)"),
    (Ledger, "due", "ledger: due (query)"),
    (Steps, "take", "intake: Steps.take (move in, fsyncs, hash, ledger; files seen together)"),
    (Steps, "seal", "Steps.seal (one package)"),
    (Steps, "turn", "Steps.turn (deliver and/or poll)"),
    (Daemon, "dispatch", "daemon: dispatch (main thread)"),
)


def instrument() -> None:
    """Wrap every step in STEPS with a timer."""
    for owner, attribute, name in STEPS:
        setattr(owner, attribute, timed(name, getattr(owner, attribute)))


def peak(pid: int | str = "self") -> float:
    """A process's peak resident memory since its exec (VmHWM), MiB; 0 once it is gone.

    Not ru_maxrss: that carries over the peak of the process that forked it (the
    benchmark's, here; python-gnupg's, for gpg), since Linux keeps it across exec.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class ChildPeaks(threading.Thread):
    """Samples the peak memory of this process's children (gpg) every 20 ms while it runs.

    Only for memory runs: the sampling costs a little CPU, so timed runs go without.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for children in Path("/proc/self/task").glob("*/children"):
                for pid in children.read_text().split():
                    try:
                        name = Path(f"/proc/{pid}/comm").read_text().strip()
                    except OSError:
                        continue
                    if not name.startswith("gpg"):  # e.g. a fork not yet exec'd: our own pages
                        continue
                    self.peaks[name] = max(self.peaks.get(name, 0.0), peak(pid))


def cpu_profile(out: Path) -> Callable[[], None]:
    """Profile every thread's CPU (`time.thread_time`, not wall time) with cProfile from
    now on; the returned function writes all threads' figures, merged, to `out`."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def profiled(thread: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()
        try:
            inner(thread)
        finally:
            profile.disable()

    threading.Thread._bootstrap_inner = profiled  # type: ignore[attr-defined]
    main = cProfile.Profile(time.thread_time)
    profiles.append(main)
    main.enable()

    def write() -> None:
        main.disable()
        with lock:
            stats = pstats.Stats(*profiles)
        stats.dump_stats(out)

    return write


def steps() -> dict[str, dict[str, float]]:
    """The seconds and calls of each step so far."""
    return {name: {"s": spent[name], "calls": calls[name]} for name in spent}


def outbound(home: Path, source: Path, partner_id: str, memory: bool) -> dict[str, Any]:
    """Send `source` to `partner_id` from drop to delivered; the figures as a dict.

    With `memory`, the peak memory of the gpg children is sampled as well.
    """
    children = ChildPeaks()
    if memory:
        children.start()
    with Gateway(Home(home), "daemon") as gw:
        runner = gw.steps
        folder = gw.home.outbound / partner_id / "conviction"
        part = folder / f"{source.name}.part"
        shutil.copyfile(source, part)
        peaks = {"opened": peak()}
        start = time.perf_counter()
        part.rename(folder / source.name)
        pid = runner.intake.move_in(folder / source.name, partner_id, "conviction")
        assert pid is not None, "taken in"
        [package] = runner.intake.record([pid])
        taken = time.perf_counter()
        peaks["taken in"] = peak()
        runner.seal(package)
        sealed = time.perf_counter()
        peaks["sealed"] = peak()
        package = gw.ledger.package(package.package_id)
        if package.state is State.SEALED:
            runner.turn(gw.ledger.partner(partner_id), [package], poll=False)
        done = time.perf_counter()
        peaks["delivered"] = peak()
        state = gw.ledger.package(package.package_id).state
    children.done.set()
    if memory:
        children.join()
    return {
        "seconds": done - start,
        "state": str(state),
        "delivered": state is State.DELIVERED,
        "phases": {
            "take in (rename, fsyncs, sha256, ledger)": taken - start,
            "seal (and upload, if large)": sealed - taken,
            "deliver": done - sealed,
        },
        "steps": steps(),
        "peak_mib": peak(),
        "peak_mib_after": peaks,
        "children_peak_mib": children.peaks,
    }


def once(home: Path) -> dict[str, Any]:
    """`gateway run --once`, timed step by step."""
    with Gateway(Home(home), "daemon") as gw:
        start = time.perf_counter()
        gw.run_once()
        seconds = time.perf_counter() - start
        gw.keyring.stop_agent()
    return {"seconds": seconds, "steps": steps()}


def daemon(home: Path, out: Path) -> None:
    """`gateway run` until SIGTERM, its steps timed; written to `out` when it stops."""
    logs.setup(False, "text")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with Gateway(Home(home), "daemon") as gw:
        start = time.perf_counter()
        try:
            gw.daemon(stop).run()
        finally:
            gw.keyring.stop_agent()
    out.write_text(json.dumps({"seconds": time.perf_counter() - start, "steps": steps()}))


if __name__ == "__main__":
    instrument()
    if folder := os.environ.get(PROFILE_ENV):
        atexit.register(cpu_profile(Path(folder) / f"{sys.argv[1]}-{os.getpid()}.pstats"))
    match sys.argv[1:]:
        case ["outbound", home, source, partner, *memory] if memory in ([], ["--memory"]):
            print(json.dumps(outbound(Path(home), Path(source), partner, bool(memory))))
        case ["once", home]:
            print(json.dumps(once(Path(home))))
        case ["daemon", home, out]:
            daemon(Path(home), Path(out))
        case _:
            sys.exit(__doc__)
