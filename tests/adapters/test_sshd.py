"""Tests for the OpenSSH test server in tests/sshd.py, using the real sftp client."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd import SshServer, pid_alive


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SshServer]:
    """A running partner server, stopped after the test."""
    with SshServer(tmp_path / "sshd") as srv:
        yield srv


def _other_key(tmp_path: Path) -> tuple[Path, str]:
    """A fresh ed25519 key pair the server does not know; returns (private, pubkey line)."""
    key = tmp_path / "intruder_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "intruder", "-f", str(key)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return key, key.with_name(key.name + ".pub").read_text().strip()


def _wait_for(predicate_text: str, server: SshServer, timeout: float = 10.0) -> None:
    """Block until ``predicate_text`` shows up in the sshd log."""
    deadline = time.monotonic() + timeout
    while predicate_text not in server.log():
        if time.monotonic() > deadline:
            pytest.fail(f"{predicate_text!r} not in sshd log:\n{server.log()}")
        time.sleep(0.05)


def _kill_group(client: subprocess.Popen[str]) -> None:
    """Kill a client started with start_new_session=True, with its ssh child, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(client.pid, signal.SIGKILL)
    for stream in (client.stdin, client.stdout, client.stderr):
        if stream is not None:
            stream.close()
    client.wait()


def test_server_starts_and_speaks_ssh(server: SshServer) -> None:
    assert server.running
    assert server.host == "127.0.0.1"
    assert server.url == f"sftp://{server.user}@127.0.0.1:{server.port}"
    assert server.host_key_line.startswith("ssh-ed25519 AAAA")
    assert len(server.host_key_line.split()) == 2  # no comment
    assert server.known_hosts_line == f"[127.0.0.1]:{server.port} {server.host_key_line}"
    assert server.upload == server.root / "upload" and server.upload.is_dir()
    assert server.download == server.root / "download" and server.download.is_dir()
    with (
        socket.create_connection((server.host, server.port), timeout=5) as sock,
        sock.makefile("rb") as reader,
    ):
        assert reader.readline().startswith(b"SSH-2.0-")


def test_put_lands_in_upload_byte_identical(server: SshServer, tmp_path: Path) -> None:
    payload = os.urandom(300_000) + b"\r\n\x00 trailing"  # binary-safe, multi-packet
    local = tmp_path / "report.pgp"
    local.write_bytes(payload)

    result = server.sftp(f"put {local} upload/report.pgp")

    assert result.returncode == 0, result.stderr
    assert (server.upload / "report.pgp").read_bytes() == payload


def test_sessions_start_in_partner_root_and_list_download(server: SshServer) -> None:
    (server.download / "reply-0001.pgp").write_bytes(b"reply")

    result = server.sftp("pwd\nls download")

    assert result.returncode == 0, result.stderr
    assert f"Remote working directory: {server.root}" in result.stdout
    assert "download/reply-0001.pgp" in result.stdout


def test_get_from_download(server: SshServer, tmp_path: Path) -> None:
    (server.download / "reply-0002.pgp").write_bytes(b"\x01\x02reply")
    target = tmp_path / "got.pgp"

    result = server.sftp(f"get download/reply-0002.pgp {target}")

    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == b"\x01\x02reply"


def test_unauthorized_key_is_refused(server: SshServer, tmp_path: Path) -> None:
    key, _ = _other_key(tmp_path)
    local = tmp_path / "sneaky.pgp"
    local.write_bytes(b"nope")

    result = server.sftp(f"put {local} upload/sneaky.pgp", key=key)

    assert result.returncode != 0
    assert "Permission denied" in result.stderr
    assert not (server.upload / "sneaky.pgp").exists()


def test_authorize_admits_a_new_key(server: SshServer, tmp_path: Path) -> None:
    key, pub = _other_key(tmp_path)
    server.authorize(pub)
    local = tmp_path / "welcome.pgp"
    local.write_bytes(b"yes")

    result = server.sftp(f"put {local} upload/welcome.pgp", key=key)

    assert result.returncode == 0, result.stderr
    assert (server.upload / "welcome.pgp").read_bytes() == b"yes"


def test_authorize_rejects_multiple_lines(server: SshServer) -> None:
    with pytest.raises(ValueError):
        server.authorize("ssh-ed25519 AAAA\nssh-ed25519 BBBB")


def test_stop_and_start_keep_port_and_host_key(server: SshServer) -> None:
    port, host_key, old_pid = server.port, server.host_key_line, server.pid

    server.stop()
    assert not server.running
    assert server.pid is None
    down = server.sftp("ls upload")
    assert down.returncode != 0  # partner unreachable while down
    assert "Connection refused" in down.stderr

    server.start()
    assert server.running
    assert server.pid != old_pid
    assert (server.port, server.host_key_line) == (port, host_key)
    up = server.sftp("ls upload")
    assert up.returncode == 0, up.stderr


def test_start_and_stop_are_idempotent(server: SshServer) -> None:
    pid = server.pid
    server.start()
    assert server.pid == pid
    server.stop()
    server.stop()
    assert not server.running


def test_replaced_host_key_fails_old_pin(server: SshServer, tmp_path: Path) -> None:
    old = server.host_key_line
    local = tmp_path / "pinned.pgp"
    local.write_bytes(b"pinned")

    new = server.replace_host_key()
    server.stop()
    server.start()

    assert new != old and server.host_key_line == new
    stale = server.sftp(f"put {local} upload/pinned.pgp", host_key_line=old)
    assert stale.returncode != 0
    assert "Host key verification failed" in stale.stderr
    assert not (server.upload / "pinned.pgp").exists()
    fresh = server.sftp(f"put {local} upload/pinned.pgp")
    assert fresh.returncode == 0, fresh.stderr


def test_no_process_left_after_context_exit(tmp_path: Path) -> None:
    with SshServer(tmp_path / "sshd") as server:
        (server.download / "held.pgp").write_bytes(b"x")
        # An interactive client keeps a connection (and its setsid()'d handlers) open.
        argv = server.sftp_command(server.client_key, server.known_hosts)
        argv.remove("-b")
        argv.remove("-")
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        # Own process group, so cleanup can also kill the ssh that sftp forks.
        client = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            _wait_for("Starting session", server)
            pids = server.processes()
            assert len(pids) > 1, "expected a connection handler besides the listener"
        except BaseException:
            _kill_group(client)
            raise
    try:
        assert not server.running and server.processes() == []
        assert [pid for pid in pids if pid_alive(pid)] == []
        # The held connection is dead too: the partner really is down.
        out, err = client.communicate("ls download\n", timeout=15)
    finally:
        _kill_group(client)
    assert "held.pgp" not in out
    assert "closed" in err


def test_address_and_pin_are_known_before_first_start(tmp_path: Path) -> None:
    server = SshServer(tmp_path / "sshd")
    url = server.url  # a gateway can be configured against a partner that is still down
    assert server.known_hosts.read_text() == server.known_hosts_line + "\n"
    assert server.sftp("ls upload").returncode != 0
    with server:
        assert server.url == url
        result = server.sftp("ls upload")
        assert result.returncode == 0, result.stderr


def test_start_failure_reports_log_and_leaks_nothing(tmp_path: Path) -> None:
    server = SshServer(tmp_path / "sshd")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((server.host, server.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match=r"(?s)sshd exited.*Bind to port"):
            server.start()
    assert not server.running
    assert server.pid is None
