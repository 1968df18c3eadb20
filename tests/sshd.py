"""A real OpenSSH ``sshd`` on 127.0.0.1 playing a partner agency's SFTP server in tests.

Usage::

    with SshServer(tmp_path / "sshd") as server:
        result = server.sftp("put report.pgp upload/report.pgp")
        assert result.returncode == 0, result.stderr

The server only speaks SFTP (``ForceCommand internal-sftp``), only accepts public keys
from ``authorized_keys`` in its base directory, and starts every session in
``base/partner`` so relative paths such as ``upload/x`` land in :attr:`SshServer.upload`.
Nothing in ``~/.ssh``, ``/etc/ssh`` or an ssh-agent is read by the server or by
:meth:`SshServer.sftp`, so tests behave the same on a developer machine and in CI.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final, Self

HOST: Final = "127.0.0.1"
START_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 5.0
SFTP_TIMEOUT: Final = 30.0

# Characters that would need quoting in sshd_config or in the internal-sftp argument
# split; pytest's tmp_path never contains them, so refusing them keeps the config simple.
_UNSAFE_PATH_CHARS: Final = frozenset(" \t\n\"'\\#")


def _find_sshd() -> Path:
    """Locate sshd; /usr/sbin is often missing from a non-root PATH."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which("sshd", path=search)
    if found is None:
        raise FileNotFoundError("sshd not found; install openssh-server")
    # sshd re-executes itself per connection and refuses to run from a relative path.
    return Path(found).resolve()


def free_port() -> int:
    """A loopback port nobody listens on now, for a server started (or started again) later.

    It lies below the kernel's ephemeral range: a port from that range, once given back,
    may be handed to another test's bind(HOST, 0) or outgoing connection while this
    server is not yet (or no longer) listening, and its clients would reach a stranger.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(max(1024, low - 16384), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:  # in use: try another
                continue
            return port


def _keygen(path: Path, comment: str) -> None:
    """Create an unencrypted ed25519 key pair at ``path`` / ``path.pub``."""
    # ssh-keygen asks before overwriting, which would hang on a closed stdin.
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )


def _pubkey_line(pub_path: Path) -> str:
    """Return ``"<type> <base64>"`` from a .pub file, dropping the comment."""
    fields = pub_path.read_text(encoding="ascii").split()
    return f"{fields[0]} {fields[1]}"


def _child_env() -> dict[str, str]:
    """Environment for ssh/sshd children with every agent and askpass hook removed."""
    env = dict(os.environ)
    for name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE"):
        env.pop(name, None)
    return env


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; the fields follow the last ')'.
    return stat.rsplit(")", 1)[1].split()


def _descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _freeze_tree(root: int, timeout: float) -> list[int]:
    """SIGSTOP ``root`` and its descendants until the tree stops changing; return descendants.

    A stopped process cannot fork, so once every member is stopped the list is complete;
    SIGSTOP is asynchronous, hence the loop instead of a single pass.
    """
    stopped: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        tree = [root, *_descendants(root)]
        new = [pid for pid in tree if pid not in stopped]
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        stopped.update(new)
        settled = all((f := _proc_stat(pid)) is None or f[0] in "TtZX" for pid in tree)
        if (not new and settled) or time.monotonic() > deadline:
            return tree[1:]
        time.sleep(0.01)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` names a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    fields = _proc_stat(pid)
    if fields is None:
        return not Path("/proc").is_dir()  # without /proc, trust kill(0)
    # Orphans reparented to an init that does not reap linger as zombies; they are dead.
    return fields[0] != "Z"


def _run_group(argv: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own process group; on timeout kill the group, not just the leader.

    sftp forks ssh, which holds the output pipes: killing only sftp (as subprocess.run
    does) would leak ssh and, with communicate(), block until ssh gives up on its own.
    """
    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(stdin, timeout=SFTP_TIMEOUT)
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            # Report a hang like any other failure: callers assert on returncode/stderr.
            err += f"\n[tests.sshd] {argv[0]} timed out after {SFTP_TIMEOUT}s; killed\n"
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)


class SshServer:
    """A disposable OpenSSH SFTP server rooted in ``base``; see the module docstring."""

    host: Final[str] = HOST

    def __init__(self, base: Path) -> None:
        """Create directories and keys under ``base``; does not start sshd."""
        self.base: Final[Path] = base.resolve()
        for part in self.base.parts:
            if _UNSAFE_PATH_CHARS.intersection(part):
                raise ValueError(f"base path must not contain spaces or quotes: {self.base}")
        # sshd matches AllowUsers against the real account; $USER/$LOGNAME (which
        # getpass.getuser() prefers) can be stale under sudo or in containers.
        self.user: Final[str] = pwd.getpwuid(os.geteuid()).pw_name
        self.root: Final[Path] = self.base / "partner"
        self.upload: Final[Path] = self.root / "upload"
        self.download: Final[Path] = self.root / "download"
        self.host_key_path: Final[Path] = self.base / "ssh_host_ed25519_key"
        self.client_key: Final[Path] = self.base / "client_ed25519"
        self.authorized_keys: Final[Path] = self.base / "authorized_keys"
        # Pins the current host key for this port; written once the port is known.
        self.known_hosts: Final[Path] = self.base / "known_hosts"
        self.config_path: Final[Path] = self.base / "sshd_config"
        self.pid_file: Final[Path] = self.base / "sshd.pid"
        self.log_path: Final[Path] = self.base / "sshd.log"

        self.upload.mkdir(parents=True, exist_ok=True)
        self.download.mkdir(parents=True, exist_ok=True)
        self._sshd = _find_sshd()
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        #: More sshd_config lines (e.g. an old server's `Ciphers`), read at the next start.
        self.extra_config: list[str] = []

        _keygen(self.host_key_path, "partner-host")
        self.host_key_line: str = _pubkey_line(self._pub(self.host_key_path))
        _keygen(self.client_key, "partner-test-client")
        self.authorized_keys.write_text("", encoding="ascii")
        self.authorize(_pubkey_line(self._pub(self.client_key)))

    # -- addressing -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """Loopback port, picked on first use and kept across restarts.

        Picking lazily lets a test configure the gateway with :attr:`url` before the
        partner has ever been started (partner-down-at-boot scenarios).
        """
        if self._port is None:
            self._port = free_port()
            self._write_known_hosts(self.known_hosts, self.host_key_line)
        return self._port

    @property
    def url(self) -> str:
        """``sftp://user@127.0.0.1:port`` for the gateway's partner configuration."""
        return f"sftp://{self.user}@{self.host}:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        """The known_hosts entry pinning the current host key for this port."""
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    @property
    def pid(self) -> int | None:
        """PID of the listening sshd, or None when stopped."""
        return self._proc.pid if self._proc is not None else None

    def processes(self) -> list[int]:
        """PIDs of the listener and every connection handler it spawned (Linux)."""
        if self._proc is None:
            return []
        return [self._proc.pid, *_descendants(self._proc.pid)]

    @property
    def running(self) -> bool:
        """True while the listening sshd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- keys -------------------------------------------------------------------------

    @staticmethod
    def _pub(private: Path) -> Path:
        return private.with_name(private.name + ".pub")

    def authorize(self, pubkey_line: str) -> None:
        """Append one OpenSSH public key line (``"ssh-ed25519 AAAA... [comment]"``)."""
        line = pubkey_line.strip()
        if not line or "\n" in line or "\r" in line:
            raise ValueError("expected exactly one public key line")
        with self.authorized_keys.open("a", encoding="ascii") as fh:
            fh.write(line + "\n")

    def replace_host_key(self) -> str:
        """Generate a fresh host key, repin :meth:`sftp` to it and return its line.

        sshd re-executes itself for every connection and reloads the key file then, so
        new connections see the new key even without a restart; stop()/start() is
        harmless and keeps tests independent of that detail.
        """
        _keygen(self.host_key_path, "partner-host")
        self.host_key_line = _pubkey_line(self._pub(self.host_key_path))
        if self._port is not None:  # else the port getter writes it on first use
            self._write_known_hosts(self.known_hosts, self.host_key_line)
        return self.host_key_line

    def _write_known_hosts(self, path: Path, host_key_line: str) -> None:
        path.write_text(f"[{self.host}]:{self.port} {host_key_line}\n", encoding="ascii")

    # -- lifecycle --------------------------------------------------------------------

    def _write_config(self) -> None:
        # internal-sftp -d makes relative SFTP paths resolve inside root without
        # ChrootDirectory, which sshd rejects when any parent (/tmp) is group/world-writable.
        sftp = f"internal-sftp -d {self.root}"
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            "AddressFamily inet",
            f"HostKey {self.host_key_path}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "UsePAM no",
            # authorized_keys lives under pytest's tmp dir, whose modes sshd would reject.
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "AllowAgentForwarding no",
            "AllowTcpForwarding no",
            "AllowStreamLocalForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            "PermitTTY no",
            "PermitUserEnvironment no",
            "PrintMotd no",
            "UseDNS no",
            "LoginGraceTime 20",
            "LogLevel VERBOSE",
            f"Subsystem sftp {sftp}",
            f"ForceCommand {sftp}",
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="ascii")

    def start(self) -> None:
        """Start sshd and block until it sends its SSH banner (at most 10 s)."""
        if self.running:
            return
        self._write_config()
        if os.geteuid() == 0:
            # As root sshd chroots its pre-auth child into this directory and aborts if absent.
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- starting sshd on port {self.port} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [str(self._sshd), "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_child_env(),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Poll until a TCP connect yields an ``SSH-`` banner; raise with the log if not."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no attempt"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self._proc.returncode} during startup:\n{self.log()}"
                )
            try:
                with (
                    socket.create_connection((self.host, self.port), timeout=1.0) as sock,
                    sock.makefile("rb") as reader,
                ):
                    banner = reader.readline(256)
                if banner.startswith(b"SSH-"):
                    return
                last_error = f"unexpected banner {banner!r}"
            except OSError as exc:
                last_error = repr(exc)
            time.sleep(0.01)
        raise RuntimeError(
            f"sshd not ready on {self.host}:{self.port} after {START_TIMEOUT}s "
            f"({last_error}):\n{self.log()}"
        )

    def stop(self) -> None:
        """Stop sshd and every session it spawned; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # Connection handlers call setsid() and outlive the listener, so a "stopped" partner
        # would keep serving open sessions. Freeze the listener (no new forks) and its
        # sessions, kill the sessions, then let the listener exit cleanly on SIGTERM.
        sessions = _freeze_tree(proc.pid, STOP_TIMEOUT)
        for pid in sessions:
            _signal(pid, signal.SIGKILL)
        _signal(proc.pid, signal.SIGTERM)
        _signal(proc.pid, signal.SIGCONT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # SIGKILL is asynchronous; wait so callers can rely on "stopped" meaning "gone".
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(map(pid_alive, sessions)) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log(self) -> str:
        """The sshd log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- client -----------------------------------------------------------------------

    def sftp_command(self, key: Path, known_hosts: Path) -> list[str]:
        """argv for the OpenSSH sftp client in batch mode, isolated from ~/.ssh and agents."""
        return [
            "sftp",
            "-b",
            "-",
            "-F",
            "/dev/null",
            "-i",
            str(key),
            "-P",
            str(self.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "CheckHostIP=no",
            "-o",
            "ConnectTimeout=10",
            f"{self.user}@{self.host}",
        ]

    def sftp(
        self, batch: str, key: Path | None = None, *, host_key_line: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``batch`` through the real sftp client; never raises on a failed transfer.

        ``key`` defaults to :attr:`client_key`; ``host_key_line`` pins a different host
        key than the current one (host-key-mismatch tests).
        """
        key = self.client_key if key is None else key
        pin = self.host_key_line if host_key_line is None else host_key_line
        # A private file per call so a custom pin never leaks into later calls.
        fd, name = tempfile.mkstemp(prefix="known_hosts.", dir=self.base)
        os.close(fd)
        known_hosts = Path(name)
        try:
            self._write_known_hosts(known_hosts, pin)
            argv = self.sftp_command(key, known_hosts)
            return _run_group(argv, batch if batch.endswith("\n") else batch + "\n")
        finally:
            known_hosts.unlink(missing_ok=True)
