"""`gateway demo`: the newcomer's first run, as a real process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import processes_under


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "demo", *args],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def place(output: str) -> Path:
    match = re.search(r"Exchange gateway demo in (\S+)", output)
    assert match, output
    return Path(match[1])


def test_demo_acknowledges_everything_and_leaves_nothing_behind() -> None:
    done = demo()

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Every package acknowledged" in done.stdout
    assert done.stdout.count(": acknowledged") == 4
    # The obligation it shows: the office's request answered within its period, on both sides.
    assert re.search(r"XB-AGENCY +answer XA-RECORDS-\S+ under MOU-TEMPLATE, due by [0-9-]{10}: "
                     r"answered in time by XB-AGENCY-", done.stdout), done.stdout  # fmt: skip
    assert re.search(r"XA-RECORDS +await XA-RECORDS-\S+ under MOU-TEMPLATE, due by [0-9-]{10}: "
                     r"answered in time by XB-AGENCY-", done.stdout), done.stdout  # fmt: skip
    assert done.stdout.count("audit trail intact") == 2
    root = place(done.stdout)
    assert not root.exists(), "the temporary folder is removed"
    assert processes_under(root) == [], "no gpg-agent or server left running"


def test_demo_keep_leaves_homes_to_explore() -> None:
    done = demo("--keep")
    root = place(done.stdout)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert processes_under(root) == []
        shown = re.search(r"gateway --home (\S+) ledger list", done.stdout)
        assert shown
        listed = subprocess.run([sys.executable, "-m", "gateway", "--home", shown[1], "ledger", "list"],
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert listed.returncode == 0 and listed.stdout.count("acknowledged") == 3
    finally:
        for keyring in {p.parent for p in root.rglob("pubring.kbx")}:
            subprocess.run(
                ["gpgconf", "--homedir", str(keyring), "--kill", "all"],
                capture_output=True,
                check=False,
            )
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_the_demo_sets_up_without_an_ssh_server() -> None:
    """Installing openssh-server starts an sshd on port 22; only the tests need one."""
    root = Path(__file__).resolve().parents[2]
    demo_script = (root / "scripts" / "demo").read_text()
    [setup_line] = [line for line in demo_script.splitlines() if line.startswith("scripts/setup")]

    def packages(*args: str) -> list[str]:
        return subprocess.run([str(root / "scripts" / "setup"), *args, "--packages"],
                              capture_output=True, text=True, check=True).stdout.split()  # fmt: skip

    for_demo = packages(*setup_line.split()[1:])
    assert "openssh-server" not in for_demo and "gnupg" in for_demo
    assert {"openssh-server", "systemd-container"} <= set(packages())
