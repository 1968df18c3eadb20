"""deploy/gateway.service booted under real systemd, in a `systemd-nspawn` container.

The container is this machine's own /usr on a throw-away root (`--volatile=yes`): the
real systemd boots in it, creates the `gateway` user from deploy/gateway.sysusers and
runs the unit as shipped, with a copy of a test home as its StateDirectory. It shares
the host's network, so the partner's sshd on loopback is reached as in production.
The gateway is installed in the container from wheels built here (no network).

Shown: READY reached (`systemctl start` of a Type=notify unit returns only then), a
package delivered, gpg-agent in the service's cgroup, `systemctl reload` applying a
changed setting and naming one that needs a restart, the watchdog killing a frozen
daemon (SIGSTOP) and systemd restarting it, `systemctl stop` ending cleanly with the
final audit checkpoint, and `systemd-analyze security` rating the unit 1.0 or less.

Where the machine cannot run the container the test says why: it fails in CI
(CI=true) and is skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    PartnerPgp,
    processes_under,
    quarantined,
    set_setting,
    wait_for,
)
from tests.sshd import SshServer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".nspawn"
#: Kept short for the test: the watchdog fires 4 s after the loop stops, restart 1 s later.
DROP_IN = "[Service]\nWatchdogSec=4\nRestartSec=1\n"


def unavailable() -> str | None:
    """Why this machine cannot boot the container, or None."""
    if os.geteuid() != 0:
        return "booting a systemd-nspawn container needs root"
    for tool in ("systemd-nspawn", "nsenter", "/usr/bin/python3", "/lib/systemd/systemd"):
        if shutil.which(tool) is None and not Path(tool).exists():
            return f"{tool} is not installed (scripts/setup installs it)"
    return None


def skip_or_fail(reason: str) -> None:
    """Fail in CI, where the container must run; skip elsewhere, saying why."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot boot the systemd container: {reason}")
    pytest.skip(f"cannot boot the systemd container: {reason}")


def run(*args: str, timeout: float = 120) -> str:
    """Run a command on the host; its output, or the test fails with it."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def nspawn(*args: str) -> list[str]:
    """systemd-nspawn over a throw-away root with this machine's /usr, not registered
    with a machined (the host need not run systemd)."""
    return ["systemd-nspawn", "--quiet", "--directory=/", "--volatile=yes", "--register=no",
            "--keep-unit", *args]  # fmt: skip


def installed() -> Path:
    """/opt/gateway of the container: a venv on Debian's python3 with this checkout
    installed from wheels, made in a container the first time and kept in .nspawn/."""
    wheels, opt = CACHE / "wheels", CACHE / "opt"
    shutil.rmtree(wheels, ignore_errors=True)
    run(sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(REPO), timeout=300)
    key = hashlib.sha256("\n".join(sorted(p.name for p in wheels.iterdir())).encode()).hexdigest()
    if not (opt / f".built-{key}").exists():
        shutil.rmtree(opt, ignore_errors=True)
        opt.mkdir(parents=True)
        opt.chmod(0o755)  # the CLI's umask made it 0700; the gateway user runs from it
        run(*nspawn(f"--bind={opt}:/opt/gateway", f"--bind-ro={wheels}:/wheels", "/bin/sh", "-c",
                    "/usr/bin/python3 -m venv /opt/gateway/.venv && /opt/gateway/.venv/bin/pip"
                    " install -q --no-index --find-links /wheels exchange-gateway"), timeout=300)  # fmt: skip
        (opt / f".built-{key}").touch()
    else:  # the same dependencies: only this checkout's code again
        run(*nspawn(f"--bind={opt}:/opt/gateway", f"--bind-ro={wheels}:/wheels", "/bin/sh", "-c",
                    "/opt/gateway/.venv/bin/pip install -q --no-index --no-deps --force-reinstall"
                    " /wheels/exchange_gateway-*.whl"), timeout=300)  # fmt: skip
    return opt


class Container:
    """A booted container; commands run inside it through nsenter."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log
        self.leader = 0

    def find_leader(self) -> bool:
        """The container's PID 1 (systemd), seen from the host."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            if pids := children.read_text().split():
                self.leader = int(pids[0])
                return Path(f"/proc/{self.leader}/comm").read_text().strip() == "systemd"
        return False

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a command in the container."""
        done = subprocess.run(
            ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--pid", "--", *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert not check or done.returncode == 0, (
            f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        return done

    def show(self, *props: str) -> dict[str, str]:
        """`systemctl show gateway` properties."""
        out = self.run("systemctl", "show", "gateway", *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines())

    def journal(self) -> str:
        """The unit's journal: systemd's lines and the daemon's."""
        return self.run("journalctl", "--unit=gateway", "--output=cat", "--no-pager").stdout


@contextlib.contextmanager
def booted(home: Home, opt: Path, tmp: Path) -> Iterator[Container]:
    """Boot the container with the unit installed and the home as its state directory."""
    drop_in, preset = tmp / "test.conf", tmp / "test.preset"
    drop_in.write_text(DROP_IN)
    # A first boot enables every service installed here (presets): none is wanted (the
    # container shares the host's network), and the test starts the gateway itself.
    preset.write_text("disable *\n")
    for path in (drop_in, preset):
        path.chmod(0o644)  # configuration is world-readable; the CLI's umask made it 0600
    log = tmp / "container.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            nspawn(f"--machine=gw{os.getpid()}", f"--bind-ro={opt}:/opt/gateway",
                   f"--bind={home.root}:/var/lib/gateway",
                   f"--bind-ro={REPO / 'deploy/gateway.service'}:/etc/systemd/system/gateway.service",
                   f"--bind-ro={drop_in}:/etc/systemd/system/gateway.service.d/test.conf",
                   f"--bind-ro={REPO / 'deploy/gateway.sysusers'}:/etc/sysusers.d/gateway.conf",
                   f"--bind-ro={preset}:/etc/systemd/system-preset/00-test.preset",
                   "--console=pipe", "--boot",
                   # ssh.socket is static: masked, so it does not try the host's port 22
                   "systemd.mask=ssh.socket", "systemd.mask=systemd-firstboot.service"),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    container = Container(process, log)
    try:
        wait_for(
            lambda: process.poll() is not None or container.find_leader(), 30, "systemd to start"
        )
        if process.poll() is not None:
            skip_or_fail(f"systemd-nspawn exited {process.returncode}: {log.read_text()[-2000:]}")
        private = Path(f"/proc/{container.leader}/root/run/systemd/private")
        wait_for(private.exists, 30, "systemd's control socket")
        state = container.run("systemctl", "is-system-running", "--wait", check=False, timeout=60)
        assert state.stdout.strip() in ("running", "degraded"), state.stdout
        yield container
    finally:
        if container.leader:  # shown by pytest when the test failed
            print(container.run("journalctl", "--no-pager", "--lines=60", check=False).stdout)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the container's systemd shuts down
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def drop(container: Container, home: Home, name: str, data: bytes) -> None:
    """Leave a file in the outbound spool as the upstream system does, as the gateway user."""
    folder = home.outbound / PARTNER_ID / "conviction"
    uid = int(container.run("id", "-u", "gateway").stdout)
    (folder / f"{name}.part").write_bytes(data)
    os.chown(folder / f"{name}.part", uid, uid)
    os.rename(folder / f"{name}.part", folder / name)


def test_the_unit_under_systemd(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    if reason := unavailable():
        skip_or_fail(reason)
    home, _, server = exchange
    for name, value in (("daemon.settle_seconds", 1), ("daemon.scan_seconds", 2)):
        set_setting(home, name, value)
    opt = installed()
    started = time.monotonic()
    with booted(home, opt, short_tmp) as c:
        booted_in = time.monotonic() - started
        # READY: a Type=notify start returns once the daemon said READY=1.
        assert c.show("ActiveState") == {"ActiveState": "inactive"}  # not started at boot
        c.run("systemctl", "start", "gateway", timeout=60)
        first = c.show("ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")
        assert first["ActiveState"] == "active" and first["SubState"] == "running", first
        assert first["StatusText"].startswith("serving: "), first
        assert "doctor --config-only" in c.run("systemctl", "cat", "gateway").stdout

        # A package delivered to the partner's sshd on the host's loopback.
        drop(c, home, "first.xml", b"<first/>")
        wait_for(lambda: len(os.listdir(server.upload)) == 1, 60, "the package delivered")

        # gpg-agent, started by the daemon to seal, lives in the service's cgroup.
        cgroup = c.show("ControlGroup")["ControlGroup"]
        processes = c.run("ps", "-e", "--format=pid=,comm=").stdout
        agents = [line.split()[0] for line in processes.splitlines() if line.endswith("gpg-agent")]
        assert agents, (
            f"no gpg-agent running: {processes}"
            + c.run("journalctl", "--no-pager", check=False).stdout[-6000:]
        )
        for pid in agents:
            assert cgroup in c.run("cat", f"/proc/{pid}/cgroup").stdout
        assert not processes_under(home.gnupg), "an agent on the keyring outside the service"
        # A command run beside the daemon, as the home's owner, signs through that agent.
        c.run("setpriv", "--reuid=gateway", "--regid=gateway", "--init-groups",
              "/opt/gateway/.venv/bin/gateway", "--home", "/var/lib/gateway", "audit", "checkpoint")  # fmt: skip
        after = c.run("ps", "-e", "--format=pid=,comm=").stdout
        assert [ln.split()[0] for ln in after.splitlines() if ln.endswith("gpg-agent")] == agents

        # Reload: a live setting applied, one that needs a restart named.
        set_setting(home, "daemon.max_package_bytes", 100)
        set_setting(home, "serve.max_connections", 5)
        c.run("systemctl", "reload", "gateway")
        wait_for(lambda: "reload: daemon.max_package_bytes is now 100" in c.journal(), 30, "reload")
        assert "reload: serve.max_connections changed to 5 in gateway.toml" in c.journal()
        drop(c, home, "big.xml", b"x" * 150)
        wait_for(lambda: len(quarantined(home)) == 1, 30, "the big file quarantined")
        assert c.show("NRestarts", "MainPID") == {"NRestarts": "0", "MainPID": first["MainPID"]}

        # The watchdog: a frozen daemon is killed and started again.
        c.run("kill", "-STOP", first["MainPID"])
        wait_for(lambda: c.show("NRestarts")["NRestarts"] == "1", 60, "the watchdog restart")
        wait_for(lambda: c.show("ActiveState")["ActiveState"] == "active", 60, "active again")
        assert "Watchdog timeout" in c.journal()
        again = c.show("MainPID", "SubState")
        assert again["MainPID"] != first["MainPID"] and again["SubState"] == "running"
        drop(c, home, "second.xml", b"<second/>")
        wait_for(lambda: len(os.listdir(server.upload)) == 2, 60, "delivered after the restart")

        # A clean stop, with the final audit checkpoint.
        checkpoints = len(list((home.spool / "audit").glob("*.checkpoint")))
        c.run("systemctl", "stop", "gateway", timeout=60)
        stopped = c.show("ActiveState", "Result", "ExecMainStatus")
        assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
        assert c.journal().count("daemon stopped") == 1  # the watchdog's kill said nothing

        # The unit's exposure, as systemd rates it.
        security = c.run("systemd-analyze", "security", "--no-pager", "gateway", check=False)
        print(security.stdout)
        score = re.search(r"Overall exposure level for gateway.service: ([0-9.]+)", security.stdout)
        assert score is not None, security.stdout + security.stderr
        print(f"booted in {booted_in:.1f} s; exposure {score[1]}")
        assert float(score[1]) <= 1.0
    assert len(list((home.spool / "audit").glob("*.checkpoint"))) == checkpoints + 1
    # Read as it is, not through a gateway: the home is the service user's, and a gateway
    # opened by root on it would refuse (WrongUser), as it must.
    with contextlib.closing(sqlite3.connect(f"file:{home.ledger}?mode=ro", uri=True)) as db:
        last = db.execute("SELECT action FROM events ORDER BY id DESC LIMIT 1").fetchone()[0]
        states = sorted(State(row[0]) for row in db.execute("SELECT state FROM packages"))
    assert last == "audit.checkpoint"
    assert states == [State.DELIVERED, State.DELIVERED, State.REJECTED]
