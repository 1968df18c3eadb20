"""Progress bars: drawn on a terminal for `send` of a large file and for `run --once`'s
delivery of it; nothing extra when stderr is not a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from gateway.adapters.home import Home
from tests.helpers import PARTNER_ID, PartnerPgp, remote_files
from tests.sshd import SshServer

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")
BIG = 40 * 1024 * 1024  # above the size from which a package is delivered while sealed


def on_terminal(home: Home, *args: str) -> tuple[int, str]:
    """Run `gateway ARGS` with stdin, stdout and stderr on a pseudo-terminal; its exit
    code and everything it drew there."""
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "gateway", "--home", str(home.root), *args],
                               stdin=slave, stdout=slave, stderr=slave, close_fds=True)  # fmt: skip
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal's last descriptor
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return process.wait(120), drawn.decode(errors="replace")


def piped(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), *args],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def big_file(tmp: Path) -> Path:
    path = tmp / "big.bin"
    path.write_bytes(os.urandom(BIG))
    return path


def test_a_terminal_sees_the_bars_of_send_and_run_once(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = exchange
    code, drawn = on_terminal(
        home, "send", str(big_file(short_tmp)), "--to", PARTNER_ID, "--kind", "conviction"
    )
    assert code == 0, drawn
    assert "taking in big.bin" in drawn and "100%" in drawn, drawn
    pid = drawn.strip().splitlines()[-1].strip()
    assert pid.startswith("GB-ACRO-"), drawn

    code, drawn = on_terminal(home, "run", "--once")
    assert code == 0, drawn
    assert f"{pid} to {PARTNER_ID}" in drawn and "%" in drawn, drawn
    assert remote_files(server) == [f"{pid}.pgp"]


def test_off_a_terminal_there_is_no_bar(
    exchange: tuple[Home, PartnerPgp, SshServer], short_tmp: Path
) -> None:
    home, _, server = exchange
    sent = piped(home, "send", str(big_file(short_tmp)), "--to", PARTNER_ID, "--kind", "conviction")
    assert sent.returncode == 0, sent.stderr
    pid = sent.stdout.strip()
    assert pid.startswith("GB-ACRO-")
    ran = piped(home, "run", "--once")
    assert ran.returncode == 0, ran.stderr

    for stderr in (sent.stderr, ran.stderr):  # log lines, and nothing else
        assert "\r" not in stderr and "%" not in stderr and "taking in" not in stderr, stderr
        assert all(LOG_LINE.match(line) for line in stderr.splitlines()), stderr
    assert f"INFO intake {pid} received" in sent.stderr and f"INFO deliver {pid}" in ran.stderr
    assert remote_files(server) == [f"{pid}.pgp"]
