"""The torture run: an operator's bad day, with a tally of what survived it.

A gateway under test (GB-ACRO) works with four partners at once: two agencies with nothing
but OpenSSH and plain gpg (DE-BKA and AU-AFP, a real sshd each on loopback), a peer
gateway it pushes to (US-NCB, its own drop server) and a peer gateway that pulls from its
drop server (NL-NP). Packages go out by spool drops and by `gateway send`, of mixed sizes
(a few over the size that is uploaded while it is sealed), and both peers send packages
back the same two ways. Meanwhile the gateway's `gateway run` is SIGKILLed at random
moments and at chosen ones (mid-upload to an sshd, mid-upload to the push peer, while the
pull peer uploads into its drop server, while `gateway send` copies, with fetched files
not yet handled), `gateway send` itself is SIGKILLed, the partners' sshds are killed and
started again, and the peers' daemons are SIGKILLed and started again. Then everything
is left to settle and every package is accounted for, by its bytes on the receiving side.

Every random choice comes from one seed, printed first; the timing of processes is not
reproducible, the plan (sizes, routes, kill kinds, gaps) is.

    python -m tests.torture [--packages 320] [--kills 30] [--seed N]   # or scripts/faults --torture

Exit 0 only when nothing accepted was lost, duplicated or left stuck, nothing was left
behind, every `gateway send` that was not killed succeeded, and every gateway's audit
trail verifies.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    TEST_REGIMES,
    DaemonProcess,
    PartnerPgp,
    Templates,
    cli,
    gateway,
    set_setting,
    stop_agents,
)
from tests.sshd import SshServer, free_port

GW, PUSH_PEER, PULL_PEER = "GB-ACRO", "US-NCB", "NL-NP"
PLAIN = ("DE-BKA", "AU-AFP")  # OpenSSH and plain gpg only
BIG = 33 * 1024 * 1024  # over deliver.STREAM_FROM: uploaded while it is sealed
STALL = (
    90.0  # seconds with no ledger changing: settled as far as it will (retries wait 4 s at most)
)

#: Timings short enough that a run takes minutes, not hours.
FAST = {"daemon.settle_seconds": 1, "daemon.poll_seconds": 1, "daemon.scan_seconds": 2,
        "retry.first_delay_seconds": 1, "retry.max_delay_seconds": 4, "daemon.workers": 2,
        "sftp.connect_timeout_seconds": 5, "sftp.io_timeout_seconds": 10}  # fmt: skip


@dataclasses.dataclass
class Drop:
    """One package a sender is asked to send: its payload is named for it alone."""

    name: str
    sender: str
    to: str
    size: int
    how: str  # "drop" (into the spool), "send" (`gateway send`), "killed-send" (SIGKILLed)
    sha256: str = ""
    mid_copy: bool = False  # a killed send: killed while it copies, else at a random moment
    printed: str = ""  # the id `send` printed
    refused: str = ""  # what a failed `send` said


@dataclasses.dataclass
class Tally:
    """What the run did and what it found."""

    seed: int
    dropped: int = 0
    accepted: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    stuck: int = 0
    leftovers: int = 0
    refused: int = 0  # `gateway send` runs (not killed) that failed
    kills: Counter[str] = dataclasses.field(default_factory=Counter)
    audit: dict[str, str] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing lost, doubled, stuck or left behind, no problem noted (a daemon that
        failed its SIGTERM, a run that never settled); every audit trail intact."""
        bad = (self.lost or self.duplicated or self.stuck or self.leftovers or self.refused
               or self.problems)  # fmt: skip
        return not bad and all(
            verdict.startswith("audit trail intact") for verdict in self.audit.values()
        )

    def report(self) -> str:
        """The tally as printed."""
        lines = [
            "== torture run",
            f"seed                     {self.seed}",
            f"time                     {self.seconds:.0f} s",
            f"packages dropped         {self.dropped:6}",
            f"accepted                 {self.accepted:6}",
            f"delivered                {self.delivered:6}",
            f"lost                     {self.lost:6}",
            f"duplicated               {self.duplicated:6}",
            f"stuck                    {self.stuck:6}",
            f"leftovers                {self.leftovers:6}",
            f"sends refused            {self.refused:6}",
            "kills                    "
            + ", ".join(f"{what} {n}" for what, n in sorted(self.kills.items())),
        ]
        lines += [f"audit {name:18} {verdict}" for name, verdict in sorted(self.audit.items())]
        lines += [f"  {problem}" for problem in self.problems]
        lines.append("result                   " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


def final(direction: str, partner: str, state: str, receipt_state: str | None) -> bool:
    """Whether a package has reached where it should end, once everything settled."""
    if direction == "in":
        return state == State.ACCEPTED and receipt_state != "due"
    return state == (State.DELIVERED if partner in PLAIN else State.ACKNOWLEDGED)


def rows(home: Home) -> list[sqlite3.Row]:
    """The ledger's packages, read as an observer (read-only, beside the daemon)."""
    db = sqlite3.connect(f"file:{home.ledger}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return list(db.execute("SELECT package_id, direction, partner, state, payload_name, "
                               "receipt_state FROM packages"))  # fmt: skip
    finally:
        db.close()


def hidden(folder: Path) -> bool:
    """Whether `folder` holds a dot-file (a part being written) right now."""
    with contextlib.suppress(OSError):
        return any(name.startswith(".") for name in os.listdir(folder))
    return False


class Torture:
    """Builds the four partners around the gateway, runs the bad day and counts."""

    def __init__(self, root: Path, seed: int, packages: int, kills: int, big: int,
                 killed_sends: int, settle_seconds: float, say: Callable[[str], None]) -> None:  # fmt: skip
        self.root, self.seed, self.say = root, seed, say
        self.packages, self.kills, self.big, self.killed_sends = packages, kills, big, killed_sends
        self.settle_seconds = settle_seconds
        self.rng = random.Random(seed)
        self.tally = Tally(seed)
        self.templates = Templates(root / "templates")
        self.homes: dict[str, Home] = {}
        self.daemons: dict[str, DaemonProcess] = {}
        self.servers: dict[str, SshServer] = {}
        self.keyrings: dict[str, PartnerPgp] = {}
        self.drops: list[Drop] = []
        self.feeding_done = threading.Event()

    # -- the setting -------------------------------------------------------------------

    def build(self) -> None:
        """Three gateways, two sshds, every partner registered on both sides."""
        ports = {GW: free_port(), PUSH_PEER: free_port()}
        for gid in (GW, PUSH_PEER, PULL_PEER):
            home = self.templates.home(gid, self.root / gid)
            for name, value in FAST.items():
                set_setting(home, name, value)
            if gid in ports:
                set_setting(home, "serve.listen", f"127.0.0.1:{ports[gid]}")
            (home.root / "key.asc").write_text(cli(home, "keys", "export", "--openpgp").stdout)
            self.homes[gid] = home
        g, x, y = (self.homes[k] for k in (GW, PUSH_PEER, PULL_PEER))

        def add(home: Home, partner: str, key: Path, fpr: str, *how: str) -> None:
            result = cli(home, "partner", "add", partner, "--openpgp-key", str(key),
                         "--fingerprint", fpr, *how, *TEST_REGIMES, "--reason", "torture run")  # fmt: skip
            assert result.exit_code == 0, result.stderr

        for pid in PLAIN:
            pgp = self.templates.partner(self.root / f"pgp-{pid}", pid)
            server = SshServer(self.root / f"sshd-{pid}")
            server.start()
            server.authorize(g.ssh_identity_pub.read_text())
            pgp.trust_gateway((g.root / "key.asc").read_text())
            add(g, pid, pgp.public_key, pgp.fingerprint, "--push", server.url,
                "--host-key", server.host_key_line)  # fmt: skip
            self.keyrings[pid], self.servers[pid] = pgp, server
        fprs = {gid: self.fingerprint(home) for gid, home in self.homes.items()}
        add(x, GW, g.root / "key.asc", fprs[GW], "--pull", "--ssh-key", str(g.ssh_identity_pub))
        add(g, PUSH_PEER, x.root / "key.asc", fprs[PUSH_PEER],
            "--push", f"sftp://{GW}@127.0.0.1:{ports[PUSH_PEER]}",
            "--host-key", x.host_key_pub.read_text())  # fmt: skip
        add(g, PULL_PEER, y.root / "key.asc", fprs[PULL_PEER], "--pull",
            "--ssh-key", str(y.ssh_identity_pub))  # fmt: skip
        add(y, GW, g.root / "key.asc", fprs[GW], "--push",
            f"sftp://{PULL_PEER}@127.0.0.1:{ports[GW]}", "--host-key", g.host_key_pub.read_text())  # fmt: skip
        for gid, home in self.homes.items():
            self.daemons[gid] = DaemonProcess(home).start()
        (self.root / "src").mkdir()

    @staticmethod
    def fingerprint(home: Home) -> str:
        with gateway(home) as gw:
            return gw.own_key

    # -- the plan ----------------------------------------------------------------------

    def plan(self) -> None:
        """Routes, sizes and ways of sending, all from the seed."""
        routes = [(GW, p) for p in (*PLAIN, PUSH_PEER, PULL_PEER)] + [
            (PUSH_PEER, GW), (PULL_PEER, GW)]  # fmt: skip
        for n in range(self.packages):
            sender, to = self.rng.choices(routes, weights=[15, 15, 15, 15, 20, 20])[0]
            roll = self.rng.random()
            size = (self.rng.randint(64, 64 * 1024) if roll < 0.8
                    else self.rng.randint(256 * 1024, 4 * 1024 * 1024))  # fmt: skip
            how = "send" if self.rng.random() < 0.15 else "drop"
            self.drops.append(
                Drop(f"t{n:04}-{self.rng.randrange(16**6):06x}.xml", sender, to, size, how)
            )
        # The big ones go to a plain partner (streamed while sealed) and to the push peer.
        for n, drop in enumerate(self.rng.sample(self.drops, min(self.big, len(self.drops)))):
            drop.sender, drop.to, drop.size = GW, (PLAIN[0], PUSH_PEER, PLAIN[1])[n % 3], BIG
        for n in range(self.killed_sends):
            to = self.rng.choice([*PLAIN, PUSH_PEER, PULL_PEER])
            size = self.rng.randint(8, 24) * 1024 * 1024
            name = f"k{n:04}-{self.rng.randrange(16**6):06x}.xml"
            self.drops.append(Drop(name, GW, to, size, "killed-send", mid_copy=n % 2 == 0))
        self.rng.shuffle(self.drops)

    def payload(self, drop: Drop) -> bytes:
        """The drop's bytes: its name first, then noise from the seed."""
        data = f"torture payload {drop.name}\n".encode()
        data += random.Random(f"{self.seed}-{drop.name}").randbytes(drop.size)
        drop.sha256 = hashlib.sha256(data).hexdigest()
        return data

    # -- the bad day -------------------------------------------------------------------

    def feed(self, gap: float) -> None:
        """Hand every drop to its sender, spool drops and sends, some sends killed."""
        rng = random.Random(self.seed + 1)
        try:
            for drop in self.drops:
                time.sleep(rng.uniform(0, 2 * gap))
                home = self.homes[drop.sender]
                data = self.payload(drop)
                if drop.how == "drop":
                    folder = home.outbound / drop.to / "conviction"
                    (folder / f"{drop.name}.part").write_bytes(data)
                    os.rename(folder / f"{drop.name}.part", folder / drop.name)
                else:
                    source = self.root / "src" / drop.name
                    source.write_bytes(data)
                    self.send(home, drop, source, rng)
                self.tally.dropped += 1
        finally:
            self.feeding_done.set()

    def send(self, home: Home, drop: Drop, source: Path, rng: random.Random) -> None:
        """`gateway send`, beside the daemon; a killed one at a random moment or mid-copy."""
        argv = [sys.executable, "-m", "gateway", "--home", str(home.root), "send", str(source),
                "--to", drop.to, "--kind", "conviction"]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
        if drop.how == "killed-send":
            if drop.mid_copy:
                self.wait_until(lambda: any(home.work.glob(".*.writing")), 10)
                self.tally.kills["send (mid-copy)"] += 1
            else:
                time.sleep(rng.uniform(0.2, 1.5))
                self.tally.kills["send (random)"] += 1
            process.kill()
        out, err = process.communicate(timeout=300)
        if process.returncode == 0:
            drop.printed = out.decode().strip()
        elif drop.how == "send":
            drop.refused = err.decode().strip()

    @staticmethod
    def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
        """Poll `condition` closely (a window may last milliseconds); whether it was seen."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.003)
        return False

    def moments(self) -> list[tuple[str, Callable[[], bool]]]:
        """The chosen moments to kill the gateway at: each seen from outside it."""
        g, x = self.homes[GW], self.homes[PUSH_PEER]
        return [
            ("mid-upload to an sshd",
             lambda: any(hidden(s.upload) for s in self.servers.values())),
            ("mid-upload to the push peer", lambda: hidden(x.mailbox / GW / "upload")),
            ("while the pull peer uploads", lambda: hidden(g.mailbox / PULL_PEER / "upload")),
            ("while send copies", lambda: any(g.work.glob(".*.writing"))),
            ("fetched, not yet handled",
             lambda: any(p.is_file() for p in g.incoming.rglob("*"))),
        ]  # fmt: skip

    def torment(self) -> None:
        """Kill the gateway at least `kills` times (and sshds and peers) while drops go on."""
        moments = self.moments()
        n = 0
        while n < self.kills or not self.feeding_done.is_set():
            time.sleep(self.rng.uniform(0.5, 3.0))
            n += 1
            if n % 3 == 0:
                what, seen = moments[(n // 3) % len(moments)]
                label = what if self.wait_until(seen, 8) else f"{what} (not seen: random)"
            else:
                label = "random moment"
            self.daemons[GW].kill()
            self.tally.kills[f"gateway run: {label}"] += 1
            time.sleep(self.rng.uniform(0, 1.0))
            if n % 7 == 0:
                pid = PLAIN[(n // 7) % 2]
                self.servers[pid].stop()  # the listener, and every session SIGKILLed
                self.tally.kills["sshd"] += 1
                self.daemons[GW].start()
                time.sleep(self.rng.uniform(0.5, 3.0))
                self.servers[pid].start()
                continue
            if n % 5 == 0:
                peer = (PUSH_PEER, PULL_PEER)[(n // 5) % 2]
                self.daemons[peer].kill()
                self.tally.kills[f"peer {peer}"] += 1
                time.sleep(self.rng.uniform(0, 1.0))
                self.daemons[peer].start()
            self.daemons[GW].start()

    # -- the reckoning -----------------------------------------------------------------

    def settled(self) -> bool:
        """Every package in every ledger final, every spool drop taken."""
        for home in self.homes.values():
            if any(not final(r["direction"], r["partner"], r["state"], r["receipt_state"])
                   for r in rows(home)):  # fmt: skip
                return False
        return not any(
            (self.homes[d.sender].outbound / d.to / "conviction" / d.name).exists()
            for d in self.drops if d.how == "drop"
        )  # fmt: skip

    def settle(self) -> None:
        """Let everything run undisturbed until settled, stalled or out of time."""
        deadline = time.monotonic() + self.settle_seconds
        last, moved = None, time.monotonic()
        while not self.settled():
            now = time.monotonic()
            snapshot = sorted(tuple(r) for home in self.homes.values() for r in rows(home))
            if snapshot != last:
                last, moved = snapshot, now
            if now > deadline or now - moved > STALL:
                self.tally.problems.append(f"not settled: nothing moved for {now - moved:.0f} s, "
                                           f"{now - deadline + self.settle_seconds:.0f} s after the bad day")  # fmt: skip
                return
            time.sleep(0.5)  # a look reads every ledger: cheap, and the run ends sooner

    def received(self) -> dict[str, list[tuple[str, str]]]:
        """payload name -> [(package id, sha256)] for every copy that reached its receiver."""
        found: dict[str, list[tuple[str, str]]] = {}
        for pid, server in self.servers.items():
            for path in sorted(server.upload.iterdir()):
                if path.name.startswith(".") or not path.name.endswith(".pgp"):
                    continue
                try:
                    plain, _ = self.keyrings[pid].decrypt(path)
                except AssertionError as err:  # counted as not arrived intact
                    self.tally.problems.append(f"{path.name} at {pid}: {err}")
                    continue
                with tarfile.open(fileobj=io.BytesIO(plain)) as archive:
                    for member in archive.getmembers():
                        if member.name.startswith("payload/"):
                            data = archive.extractfile(member).read()  # type: ignore[union-attr]
                            found.setdefault(member.name.removeprefix("payload/"), []).append(
                                (path.stem, hashlib.sha256(data).hexdigest()))  # fmt: skip
        for home in self.homes.values():
            for sender in (p for p in home.inbound.iterdir() if p.is_dir()):
                for folder in (p for p in sender.iterdir() if not p.name.startswith(".")):
                    for path in folder.iterdir():
                        if path.name != "manifest.json":
                            digest = hashlib.sha256(path.read_bytes()).hexdigest()
                            found.setdefault(path.name, []).append((folder.name, digest))
        return found

    def reckon(self) -> None:
        """Count every drop by its bytes where it should have arrived, and what is left."""
        t = self.tally
        ledgers = {gid: rows(home) for gid, home in self.homes.items()}
        arrived = self.received()
        for drop in self.drops:
            ours = [r for r in ledgers[drop.sender]
                    if r["direction"] == "out" and r["payload_name"] == drop.name]  # fmt: skip
            copies = arrived.get(drop.name, [])
            if drop.printed and drop.printed not in {r["package_id"] for r in ours}:
                t.lost += 1
                t.problems.append(f"send printed {drop.printed} for {drop.name}: not in the ledger")
            if drop.refused:
                t.refused += 1
                t.problems.append(f"send of {drop.name} refused: {drop.refused}")
            if not ours:
                if copies:
                    t.duplicated += 1
                    t.problems.append(f"{drop.name} arrived but was never accepted")
                elif drop.how == "drop":
                    t.lost += 1
                    t.problems.append(f"{drop.name}: dropped, never accepted")
                continue
            t.accepted += 1
            if len(ours) > 1 or len(copies) > 1:
                t.duplicated += 1
                t.problems.append(
                    f"{drop.name}: {len(ours)} packages, {len(copies)} copies arrived"
                )
            good = [c for c in copies if c[1] == drop.sha256]
            if good:
                t.delivered += 1
            else:
                t.lost += 1
                states = [(r["package_id"], r["state"]) for r in ours]
                t.problems.append(f"{drop.name} to {drop.to}: not arrived intact {states}")
        for gid, ledger in ledgers.items():
            for r in ledger:
                if not final(r["direction"], r["partner"], r["state"], r["receipt_state"]):
                    t.stuck += 1
                    t.problems.append(f"stuck at {gid}: {r['package_id']} {r['direction']} "
                                      f"{r['state']} receipt {r['receipt_state']}")  # fmt: skip
        for path in self.leftovers():
            t.leftovers += 1
            t.problems.append(f"left behind: {path.relative_to(self.root)}")

    def leftovers(self) -> Iterator[Path]:
        """Plaintext, parts, unhandled files and quarantine entries (nothing sent here is
        bad input) anywhere once everything settled."""
        for home in self.homes.values():
            yield from home.quarantine.iterdir()
            yield from (p for p in home.work.rglob("*") if p.is_file())
            yield from (p for p in home.incoming.rglob("*") if p.is_file())
            yield from (p for p in home.outbound.rglob("*") if p.is_file())
            yield from (p for p in home.inbound.glob("*/.*"))
            yield from (p for p in home.mailbox.glob("*/upload/*"))
        for server in self.servers.values():
            yield from (p for p in server.upload.iterdir() if p.name.startswith("."))

    def audit(self) -> None:
        """`gateway audit verify` on every home."""
        for gid, home in self.homes.items():
            result = cli(home, "audit", "verify")
            self.tally.audit[gid] = (result.stdout or result.stderr).strip()

    # -- the whole run -----------------------------------------------------------------

    def run(self) -> Tally:
        """Build, plan, torment, settle, stop, count."""
        started = time.monotonic()
        self.build()
        self.plan()
        self.say(f"torture: seed {self.seed}, {len(self.drops)} packages, "
                 f"at least {self.kills} kills of the gateway")  # fmt: skip
        feeder = threading.Thread(target=self.feed, args=(self.kills * 3.0 / len(self.drops),),
                                  name="torture-feeder")  # fmt: skip
        feeder.start()
        try:
            self.torment()
        finally:
            feeder.join()
        self.say(f"torture: bad day over after {time.monotonic() - started:.0f} s; settling")
        self.settle()
        codes = {gid: d.terminate() for gid, d in self.daemons.items()}
        for gid, code in codes.items():
            if code != 0:
                self.tally.problems.append(f"{gid}'s daemon exited {code} on SIGTERM")
        self.reckon()
        self.audit()
        self.tally.seconds = time.monotonic() - started
        return self.tally

    def close(self) -> None:
        """Stop every process the run started."""
        for daemon in self.daemons.values():
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.kill()
        for server in self.servers.values():
            server.stop()
        stop_agents(self.root)
        self.templates.close()


def torture(root: Path, seed: int, packages: int = 320, kills: int = 30, big: int = 3,
            killed_sends: int = 8, settle_seconds: float = 600,
            say: Callable[[str], None] = print) -> Tally:  # fmt: skip
    """One torture run in `root`; its tally."""
    run = Torture(root, seed, packages, kills, big, killed_sends, settle_seconds, say)
    try:
        return run.run()
    finally:
        run.close()


def main() -> int:
    """Command line: run once, print the tally, exit 1 unless it passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--packages", type=int, default=320)
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs of `gateway run`")
    parser.add_argument("--big", type=int, default=3, help="packages of 33 MiB")
    parser.add_argument("--killed-sends", type=int, default=8)
    parser.add_argument("--settle", type=float, default=600, help="seconds allowed to settle")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    root = Path(tempfile.mkdtemp(prefix="gwx", dir="/tmp"))  # short: gpg-agent socket paths
    try:
        tally = torture(root, seed, args.packages, args.kills, args.big, args.killed_sends,
                        args.settle, lambda line: print(line, flush=True))  # fmt: skip
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(tally.report())
    return 0 if tally.ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM too
    sys.exit(main())
