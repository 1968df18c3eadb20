"""`python -m bench.openpgp [--calls N] [--rounds R] [--size BYTES]`: the cost of one gpg call.

The hot OpenPGP calls (seal = sign+encrypt, open = decrypt+verify, receipt = clearsign,
and its check = verify) on small messages, three ways on the same keyring with the same
gpg arguments:

- `gpg`: `subprocess.run` of the bare binary, its input a file: the floor;
- `python-gnupg`: `gnupg.GPG.encrypt_file` / `decrypt_file` / `sign_file` under the
  adapter's deadline, as the adapter called them before it drove gpg itself;
- `adapter`: `Keyring.seal` / `open_message` / `sign_clear`, status checks included.

The three alternate, in a rotating order, for each round. Reported per call and per
side: wall time, CPU of this Python process (all its threads), CPU of its gpg children
(reaped, from `RUSAGE_CHILDREN`) and of the keyring's gpg-agent (from /proc): the
medians over rounds, and the median per-round ratio of each side to the adapter. CPU
rather than wall time, because the machine is shared; the ratios come from the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.measure import median
from gateway.adapters.clock import SystemClock
from gateway.adapters.gpg import _SEAL_ARGS, Keyring
from tests.helpers import PartnerPgp, stop_agents

Call = Callable[[], object]


def agent_cpu(home: Path) -> float:
    """CPU-seconds so far of the gpg-agent serving `home`, 0 if none runs."""
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(home).encode() in (entry / "cmdline").read_bytes():
                stat = (entry / "stat").read_text()
                if "(gpg-agent)" in stat:
                    fields = stat.rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return 0.0


def measure(call: Call, calls: int, home: Path) -> dict[str, float]:
    """Per call, in ms: wall, this process's CPU, its reaped children's CPU, the agent's."""
    agent, kids = agent_cpu(home), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    gpg = after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime
    per = 1000 / calls
    return {
        "wall": wall * per,
        "python": cpu * per,
        "gpg": gpg * per,
        "agent": (agent_cpu(home) - agent) * per,
    }


class Bench:
    """A gateway keyring with its own key and a pinned partner, and the calls to time."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.keyring = Keyring.create(root / "ring", timeout=60, clock=SystemClock())
        self.own = self.keyring.generate("GB-ACRO", days=30)
        self.partner = PartnerPgp(root / "pgp", "US-NCB")
        self.keyring.import_pinned(self.partner.public_key, self.partner.fingerprint)
        self.partner.trust_gateway(self.keyring.export_public(self.own))
        self.payload = os.urandom(size)
        plain = root / "plain"
        plain.write_bytes(self.payload)
        self.plain = plain
        self.sealed = root / "in.pgp"  # the partner's package, to the gateway
        self.partner.gpg("--sign", "--encrypt", "--recipient", self.own, "--trust-model",
                         "always", "--output", str(self.sealed), str(plain))  # fmt: skip
        self.signed = root / "in.asc"  # the partner's receipt, clearsigned
        self.partner.gpg("--clearsign", "--output", str(self.signed), str(plain))
        self.signers = frozenset({self.partner.fingerprint})
        self.out = root / "out"
        self.keyring.seal(io.BytesIO(self.payload), self.out, self.own,
                          self.partner.fingerprint, hide=False)  # fmt: skip  # starts the agent
        gnupg = self.keyring._gpg  # the python-gnupg object the adapter keeps
        self.gnupg = gnupg
        self.base = gnupg.make_args([], False)

    def close(self) -> None:
        """Stop both keyrings' agents."""
        self.keyring.close()
        self.keyring.stop_agent()
        stop_agents(self.partner.home)

    def bare(self, args: list[str], source: Path) -> Call:
        """gpg as a plain subprocess, with python-gnupg's command line, input from a file."""

        def call() -> None:
            with source.open("rb") as f:
                subprocess.run([*self.base, *args], stdin=f, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, check=True, timeout=60)  # fmt: skip

        return call

    def calls(self) -> dict[str, dict[str, Call]]:
        """For each operation, the three ways of doing it."""
        k, g, out, own, them = (
            self.keyring,
            self.gnupg,
            self.out,
            self.own,
            self.partner.fingerprint,
        )
        seal_args = ["--encrypt", "--recipient", them, "--yes", "--output", str(out), "--sign",
                     "--default-key", own, "--trust-model", "always", *_SEAL_ARGS]  # fmt: skip
        sign_args = ["-sa", "--clearsign", "--default-key", own, "--yes", "--output", str(out),
                     "--digest-algo", "SHA256"]  # fmt: skip

        def open_args(limit: int) -> list[str]:
            return ["--decrypt", "--yes", "--output", str(out), "--trust-model", "always",
                    "--max-output", str(limit)]  # fmt: skip

        def old(what: str, run: Callable[[], object]) -> Call:
            def call() -> None:
                with g.deadline(what):
                    result = run()
                assert getattr(result, "returncode", None) == 0, what

            return call

        def old_open(source: Path) -> Call:
            def run() -> object:
                with source.open("rb") as f:
                    return g.decrypt_file(f, always_trust=True, output=str(out),
                                          extra_args=["--max-output", str(1 << 20)])  # fmt: skip

            return old("open", run)

        return {
            "seal": {
                "gpg": self.bare(seal_args, self.plain),
                "python-gnupg": old("seal", lambda: g.encrypt_file(
                    io.BytesIO(self.payload), [them], sign=own, always_trust=True, armor=False,
                    output=str(out), extra_args=list(_SEAL_ARGS))),
                "adapter": lambda: k.seal(io.BytesIO(self.payload), out, own, them, hide=False),
            },
            "open": {
                "gpg": self.bare(open_args(1 << 20), self.sealed),
                "python-gnupg": old_open(self.sealed),
                "adapter": lambda: k.open_message(
                    self.sealed, out, self.signers, encrypted=True, max_output=1 << 20),
            },
            "receipt": {
                "gpg": self.bare(sign_args, self.plain),
                "python-gnupg": old("sign", lambda: g.sign_file(
                    io.BytesIO(self.payload), keyid=own, clearsign=True, output=str(out),
                    extra_args=["--digest-algo", "SHA256"])),
                "adapter": lambda: k.sign_clear(io.BytesIO(self.payload), out, own),
            },
            "verify": {
                "gpg": self.bare(open_args(64 * 1024), self.signed),
                "python-gnupg": old_open(self.signed),
                "adapter": lambda: k.open_message(
                    self.signed, out, self.signers, encrypted=False, max_output=64 * 1024),
            },
        }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Time the calls and print one table per operation."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.openpgp", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=100, help="calls per side per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after a warm-up)")
    parser.add_argument("--size", type=int, default=4096, help="message bytes")
    parser.add_argument("--only", help="operations, e.g. seal,open")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="gp", dir="/tmp"))
    bench = Bench(root, args.size)
    try:
        table = bench.calls()
        ops = args.only.split(",") if args.only else list(table)
        print(f"{args.calls} calls x {args.rounds} rounds, {args.size} bytes, "
              f"{os.cpu_count()} cores; ms per call, median over rounds")  # fmt: skip
        for op in ops:
            sides = list(table[op])
            figures: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
            for r in range(args.rounds + 1):
                order = sides[r % len(sides) :] + sides[: r % len(sides)]
                taken = {s: measure(table[op][s], args.calls if r else 10, root) for s in order}
                if r:
                    for s in sides:
                        figures[s].append(taken[s])
                print(f"  {op} round {r or 'warm-up'}: " + ", ".join(
                    f"{s} {t['python'] + t['gpg']:.2f}" for s, t in taken.items()),
                    file=sys.stderr)  # fmt: skip
            print(f"\n{op:8} {'wall':>7} {'python':>7} {'gpg':>7} {'agent':>7} "
                  f"{'cpu':>7}  cpu / adapter (per round)")  # fmt: skip
            for s in sides:
                rows = figures[s]

                def total(t: dict[str, float]) -> float:
                    return t["python"] + t["gpg"] + t["agent"]

                ratios = [
                    total(a) / total(b) for a, b in zip(rows, figures["adapter"], strict=True)
                ]
                cells = [median([t[k] for t in rows]) for k in ("wall", "python", "gpg", "agent")]
                print(f"{s:12} " + " ".join(f"{c:7.2f}" for c in cells)
                      + f" {median([total(t) for t in rows]):7.2f}  {median(ratios):.2f} "
                      + f"({', '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
