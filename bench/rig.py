"""The test bench: a partner's sshd and gpg, a gateway home, and the bare tools beside it.

Everything lives in one short folder under /tmp (gpg-agent's socket path must stay under
108 bytes), and everything started in it is stopped by `Rig.close()`.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.measure import REPO, exit_cpu, reap_agents
from gateway.adapters.home import Home
from gateway.admin import keys, partners, policy
from tests.helpers import PartnerPgp, processes_under
from tests.sshd import SshServer

GATEWAY_ID = "GB-ACRO"
PARTNER_ID = "US-NCB"
KIND = "conviction"
#: What the bare-tools baseline runs to seal, as SPEC section 4 asks of the gateway.
SEAL_OPTIONS = (
    "--sign",
    "--encrypt",
    "--compress-algo",
    "none",
    "--cipher-algo",
    "AES256",
    "--digest-algo",
    "SHA256",
)


#: Where a rig is made unless told: a short path, for the sockets inside (108 bytes at most).
BASE = Path("/tmp")  # noqa: S108 - a folder of its own is made inside, by mkdtemp


class Rig:
    """A partner (sshd + plain gpg), a gateway home for it, and a bare-tools keyring."""

    def __init__(self, say: Callable[[str], None] = print, profile: Path | None = None,
                 base: Path = BASE) -> None:  # fmt: skip
        self.say = say
        self.profile = profile
        self._spies: list[subprocess.Popen[bytes]] = []
        self.daemon_cpu_s = 0.0
        self.cli_cpu_s: Counter[str] = Counter()
        self.root = Path(tempfile.mkdtemp(prefix="gb", dir=base))
        self.keyrings: list[Path] = []
        self.server = SshServer(self.root / "sshd")
        self.server.start()
        self.partner = PartnerPgp(self.root / "pgp", PARTNER_ID)
        self.keyrings.append(self.partner.home)
        self.home = Home(self.root / "gw")
        with keys.init(self.home, GATEWAY_ID, "bench") as gw:
            self.keyrings.append(self.home.gnupg)
            partners.add_push(
                gw,
                PARTNER_ID,
                self.partner.public_key,
                self.partner.fingerprint,
                self.server.url,
                self.server.host_key_line,
                "benchmark partner",
            )
            policy.set_policy(gw, PARTNER_ID, ["MOU-TEMPLATE"], [], "benchmark partner")
            self.own_fpr = gw.own_key
            self.partner.trust_gateway(gw.keyring.export_public(self.own_fpr))
        self.server.authorize(self.home.ssh_identity_pub.read_text())
        # The bare tools use the same keys as the gateway, from their own copy of its keyring.
        self.bare = self.root / "bare"
        shutil.copytree(self.home.gnupg, self.bare, ignore=shutil.ignore_patterns("S.*", "*.lock"))
        self.keyrings.append(self.bare)
        self.spool = self.home.outbound / PARTNER_ID / KIND

    # -- the bare tools ---------------------------------------------------------------

    def gpg_seal(self) -> list[str]:
        """argv without `--output OUT SOURCE`: bare gpg signing with the gateway's key and
        encrypting to the partner."""
        return [
            "gpg",
            "--homedir",
            str(self.bare),
            "--batch",
            "--yes",
            "--trust-model",
            "always",
            "--local-user",
            self.own_fpr,
            "--recipient",
            self.partner.fingerprint,
            *SEAL_OPTIONS,
        ]

    def gpg_open(self) -> list[str]:
        """argv without `--output OUT --decrypt SOURCE`: bare gpg opening a partner's package."""
        return ["gpg", "--homedir", str(self.bare), "--batch", "--yes", "--trust-model", "always"]

    def sftp(self) -> list[str]:
        """argv: OpenSSH sftp in batch mode (batch on stdin) to the partner, as the gateway's key."""
        return self.server.sftp_command(self.home.ssh_identity, self.server.known_hosts)

    def run(self, argv: list[str], stdin: str = "", timeout: float = 3600) -> float:
        """Run a command to completion; return the CPU-seconds it and its children used.

        A failure stops the benchmark with its message.
        """
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            argv,
            input=stdin.encode(),
            capture_output=True,
            timeout=timeout,
            start_new_session=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {done.stderr.decode()[-2000:]}"
            )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime

    def gateway_cli(self, *args: str, home: Home | None = None) -> bytes:
        """Run `python -m gateway --home HOME ARGS`; return its stdout.

        Its own CPU-seconds and its children's (gpg) are added to `cli_cpu_s`.
        """
        argv = [sys.executable, "-m", "gateway", "--home", str((home or self.home).root), *args]
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, cwd=REPO)
            self.spy(proc, args[0])
            own, children = exit_cpu(proc.pid)
            proc.wait()
            stdout.seek(0)
            stderr.seek(0)
            out, err = stdout.read(), stderr.read()
        self.cli_cpu_s["gateway"] += own
        self.cli_cpu_s["gpg"] += children
        # `status` exits 1 when something needs attention (a million packages: always)
        if proc.returncode not in ((0, 1) if args[0] == "status" else (0,)):
            raise RuntimeError(f"gateway {' '.join(args)} failed: {err.decode()[-2000:]}")
        return out

    def run_python(self, argv: list[str]) -> bytes:
        """Run this Python with `argv` in the repository; return its stdout."""
        with subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
        ) as proc:
            self.spy(proc, argv[1] if argv[0] == "-m" else "python")
            out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {err.decode()[-2000:]}")
        return out

    def spy(self, proc: subprocess.Popen[bytes], name: str) -> None:
        """With --profile, sample `proc` with py-spy (every thread, raw stacks) until it exits.

        py-spy starts a moment later: it cannot attach before the interpreter is up.
        """
        if self.profile is None:
            return
        out = self.profile / f"{name}-{proc.pid}"
        spy = shlex.join(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(proc.pid),
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "--rate",
                "250",
                "--output",
                f"{out}.txt",
            ]
        )
        with open(f"{out}.log", "wb") as log:
            self._spies.append(
                subprocess.Popen(["sh", "-c", f"sleep 0.2; exec {spy}"], stdout=log, stderr=log)
            )

    # -- housekeeping -----------------------------------------------------------------

    def clear(self, *folders: Path) -> None:
        """Empty folders (server upload, local outputs) between runs; never timed."""
        for folder in folders:
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def folder(self, name: str) -> Path:
        """A fresh, empty folder in the bench's temporary root."""
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o700)
        return path

    @contextlib.contextmanager
    def daemon(self, argv: list[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
        """`gateway run` (or `argv`) in its own process, from start-up until it has stopped.

        Afterwards `daemon_cpu_s` holds the CPU seconds of that process and its gpg children.
        """
        log = self.root / "daemon.log"
        before = log.read_text().count("daemon started") if log.exists() else 0
        argv = argv or [sys.executable, "-m", "gateway", "--home", str(self.home.root), "run"]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=REPO
            )
        self.spy(proc, "daemon")
        try:
            deadline = time.monotonic() + 60
            while log.read_text().count("daemon started") == before:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            time.sleep(2.0)  # the watcher is up and the first poll of the partner done
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 60
            while (reaped := os.wait4(proc.pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > deadline:
                    proc.kill()
                    reaped = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            _, status, usage = reaped
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.daemon_cpu_s = usage.ru_utime + usage.ru_stime

    def close(self) -> None:
        """Stop sshd and every gpg-agent started here, then remove the folder (all of it,
        whatever fails on the way)."""
        try:
            for spy in self._spies:  # each stops when the process it samples has exited
                try:
                    spy.wait(30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
            self.server.stop()
        finally:
            for keyring in self.keyrings:
                subprocess.run(
                    ["gpgconf", "--homedir", str(keyring), "--kill", "all"],
                    capture_output=True,
                    check=False,
                )
            deadline = time.monotonic() + 5
            while (left := processes_under(self.root)) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in left:  # only processes whose command line names our own folder
                self.say(f"warning: process {pid} outlived the bench; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            reap_agents()
            shutil.rmtree(self.root, ignore_errors=True)
