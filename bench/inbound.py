"""Inbound scenario: packages a partner built with plain gpg, fetched, opened and receipted."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shlex
import shutil
import sqlite3
import subprocess
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.measure import (
    Row,
    Target,
    alternate,
    cpu_busy,
    cpu_ratio,
    cpu_spent,
    median,
    processes,
    rate_row,
    servers,
)
from bench.outbound import split_rows
from bench.rig import GATEWAY_ID, PARTNER_ID, Rig
from gateway.core.names import new_ulid
from gateway.transports.push import MAX_FILES_PER_POLL

Say = Callable[[str], None]
SIZE = 4096
DIAGNOSED = 200  # packages in the instrumented pass: enough for per-package figures


def envelope(rig: Rig, pid: str, payload: bytes) -> bytes:
    """The tar of SPEC section 4 as the partner writes it: manifest.json, then the payload."""
    doc = {
        "schema": "gateway-envelope/1",
        "package_id": pid,
        "kind": "response",
        "sender": {"id": PARTNER_ID, "key": rig.partner.fingerprint},
        "recipient": {"id": GATEWAY_ID, "key": rig.own_fpr},
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "payload": {
            "name": "response.xml",
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("manifest.json", json.dumps(doc, indent=2).encode()),
            ("payload/response.xml", payload),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build_set(rig: Rig, count: int, folder: Path) -> None:
    """`count` packages with fresh ids, signed and encrypted to the gateway by the partner's gpg."""

    def one(_: int) -> None:
        pid = f"{PARTNER_ID}-{new_ulid(time.time())}"
        sealed = rig.partner.gpg(
            "--trust-model",
            "always",
            "--local-user",
            rig.partner.fingerprint,
            "--recipient",
            rig.own_fpr,
            "--compress-algo",
            "none",
            "--cipher-algo",
            "AES256",
            "--digest-algo",
            "SHA256",
            "--encrypt",
            "--sign",
            "--output",
            "-",
            input=envelope(rig, pid, os.urandom(SIZE)),
        ).stdout
        (folder / f"{pid}.pgp").write_bytes(sealed)

    # One agent before the threads: gpg runs racing to start it fail.
    subprocess.run(
        ["gpgconf", "--homedir", str(rig.partner.home), "--launch", "gpg-agent"], check=True
    )
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(one, range(count)))


def accepted_count(rig: Rig) -> int:
    """Inbound packages the ledger holds as accepted."""
    with sqlite3.connect(f"file:{rig.home.ledger}?mode=ro", uri=True) as db:
        row = db.execute("SELECT count(*) FROM packages WHERE state = 'accepted'").fetchone()
    return int(row[0])


def inbound(rig: Rig, count: int, repeats: int, say: Say, warm: int, diagnose: bool) -> list[Row]:
    """Scenario 5: `gateway run --once` until all are in vs `sftp get` + a `gpg --decrypt` loop.

    The warm-up uses `warm` packages; with `diagnose`, one more pass (of at most DIAGNOSED
    packages) runs `Gateway.run_once()` with every step timed (`bench.child once`).
    """
    probe = min(count, DIAGNOSED)
    sizes = [warm] + [count] * repeats + ([probe] if diagnose else [])
    sets = [rig.folder(f"in-{i}") for i in range(len(sizes))]  # the gateway needs new ids each run
    for i, (folder, size) in enumerate(zip(sets, sizes, strict=True)):
        say(f"    the partner seals set {i + 1}/{len(sets)} ({size} packages)")
        build_set(rig, size, folder)
    unused = iter(sets)
    out = rig.folder("in-out")
    download = rig.server.download
    passes: list[int] = []
    found: list[dict[str, Any]] = []  # what the instrumented pass reports
    cpu: dict[str, list[float]] = {"gateway": [], "baseline": []}
    split: dict[str, list[dict[str, float]]] = {"gateway": [], "baseline": []}

    def ours(argv: list[str] | None = None) -> float:
        for path in (batch := list(next(unused).iterdir())):
            shutil.copy(path, download)
        before, start, busy, runs = accepted_count(rig), time.perf_counter(), cpu_busy(), 0
        procs, cli = processes(), rig.cli_cpu_s.copy()
        while any(download.glob("*.pgp")) and runs <= math.ceil(len(batch) / MAX_FILES_PER_POLL):
            if argv:
                found.append(json.loads(rig.run_python(argv)))
            else:
                rig.gateway_cli("run", "--once")
            runs += 1
        seconds = time.perf_counter() - start
        cpu["gateway"].append((cpu_busy() - busy) / len(batch))
        if not argv:  # not the instrumented pass
            roles = {
                "gateway": rig.cli_cpu_s["gateway"] - cli["gateway"],
                "gpg": rig.cli_cpu_s["gpg"] - cli["gpg"],
                **servers(cpu_spent(procs, processes(), rig.root)),
            }
            split["gateway"].append({k: 1000 * v / len(batch) for k, v in roles.items()})
        if (got := accepted_count(rig) - before) != len(batch):
            raise RuntimeError(f"the gateway accepted {got} of {len(batch)} packages")
        receipts = len(list(rig.server.upload.glob("*.receipt")))
        if receipts != len(batch):
            raise RuntimeError(f"the gateway sent {receipts} receipts for {len(batch)} packages")
        passes.append(runs)
        rig.clear(rig.server.upload, rig.home.inbound / PARTNER_ID)
        return seconds

    open_ = shlex.join(rig.gpg_open())
    get = shlex.join(rig.sftp())
    fetch = f'printf "get download/*.pgp %s/\\n" "$0" | {get} >/dev/null'
    loop = f'for f in "$0"/*.pgp; do {open_} --output "${{f%.pgp}}.tar" --decrypt "$f" 2>/dev/null || exit 1; done'

    def theirs(folder: Path) -> float:
        for path in (batch := list(folder.iterdir())):
            shutil.copy(path, download)
        start, busy, procs = time.perf_counter(), cpu_busy(), processes()
        sftp = rig.run(["bash", "-c", fetch, str(out)])
        gpg = rig.run(["bash", "-c", loop, str(out)])
        seconds = time.perf_counter() - start
        cpu["baseline"].append((cpu_busy() - busy) / len(batch))
        roles = {"gpg": gpg, "sftp + ssh": sftp, **servers(cpu_spent(procs, processes(), rig.root))}
        split["baseline"].append({k: 1000 * v / len(batch) for k, v in roles.items()})
        if (opened := len(list(out.glob("*.tar")))) != len(batch):
            raise RuntimeError(f"the gpg loop opened {opened} of {len(batch)} packages")
        rig.clear(out, download)
        return seconds

    spent: dict[str, list[float]] = {}
    seconds = alternate(
        {"gateway": ours, "baseline": lambda: theirs(sets[1])},
        repeats,
        say=say,
        warmup={"gateway": ours, "baseline": lambda: theirs(sets[0])},
        cpu=spent,
        root=rig.root,
    )
    details: dict[str, Any] = {
        "run_once_passes": passes[-repeats:],
        "max_files_per_poll": MAX_FILES_PER_POLL,
        "cpu_ms_per_package": {k: 1000 * median(v[-repeats:]) for k, v in cpu.items()},
        "cpu_ms_per_package_split": {k: v[-repeats:] for k, v in split.items()},
        "cpu_s": spent,
    }
    if diagnose:
        say(f"    once more with {probe} packages and every step timed (bench.child once)")
        ours(["-m", "bench.child", "once", str(rig.home.root)])
        steps: Counter[str] = Counter()
        for run in found:
            for name, step in run["steps"].items():
                steps[name] += step["s"]
        details["instrumented_packages"] = probe
        details["instrumented_run_once_s"] = sum(run["seconds"] for run in found)
        details["instrumented_ms_per_package"] = {
            n: 1000 * s / probe for n, s in sorted(steps.items())
        }
    row = rate_row(
        f"5. inbound {count} x 4 KiB, run --once vs sftp get + gpg loop",
        count,
        "files/s",
        seconds["gateway"],
        seconds["baseline"],
        Target("ratio", ">=", 1.0),
        **details,
    )
    row.cpu_ratio = cpu_ratio(spent)
    return [row, *split_rows("5.", split, repeats, Target("gateway", "<=", 4, "ms"))]
