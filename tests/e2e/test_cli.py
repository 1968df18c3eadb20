"""The operator's commands: what they print, what they refuse, and how they fail."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from gateway.adapters.home import Home
from gateway.adapters.lock import exclusive
from gateway.cli import COMMANDS
from gateway.core.lifecycle import State
from gateway.core.names import new_package_id
from tests.helpers import GATEWAY_ID, PARTNER_ID, PartnerPgp, Templates, cli, gateway, partner_add

CLI = Path(__file__).resolve().parents[2] / "gateway" / "cli"


def test_init_creates_a_tight_home_and_refuses_to_overwrite(short_tmp: Path) -> None:
    root = short_tmp / "gw"
    first = cli(root, "init", "--id", GATEWAY_ID)
    assert first.exit_code == 0, first.stderr
    home = Home(root)
    for folder in (home.keys, home.gnupg, home.ssh, home.spool, home.outbound, home.quarantine):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(home.ssh_identity.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.ledger.stat().st_mode) & 0o077 == 0
    assert home.ssh_identity_pub.read_text().startswith("ssh-ed25519 ")
    assert home.host_key_pub.read_text().startswith("ssh-ed25519 ")
    assert 'id = "GB-ACRO"' in home.settings.read_text()
    before = home.settings.read_bytes(), home.ssh_identity.read_bytes()

    again = cli(root, "init", "--id", "FR-CJN")

    assert again.exit_code == 12  # HomeExists
    assert again.stderr.startswith("error: ") and "already a gateway home" in again.stderr
    assert (home.settings.read_bytes(), home.ssh_identity.read_bytes()) == before


def test_init_refuses_a_bad_authority_id(short_tmp: Path) -> None:
    result = cli(short_tmp / "gw", "init", "--id", "acro")
    assert result.exit_code == 2  # UsageError
    assert "not an authority id" in result.stderr
    assert not (short_tmp / "gw" / "gateway.toml").exists()


def test_keys_show_and_export(home: Home, partner_pgp: PartnerPgp) -> None:
    shown = json.loads(cli(home, "keys", "show", "--json").stdout)
    exported = cli(home, "keys", "export", "--openpgp").stdout
    partner_pgp.trust_gateway(exported)

    assert partner_pgp.colons("--list-keys", shown["openpgp"]["fingerprint"]) == [
        shown["openpgp"]["fingerprint"]
    ]
    assert shown["openpgp"]["expires"] is not None, "the gateway's key expires"
    assert cli(home, "keys", "export", "--ssh").stdout == home.ssh_identity_pub.read_text()
    keygen = subprocess.run(
        ["ssh-keygen", "-lf", str(home.host_key_pub)], capture_output=True, text=True, check=True
    )
    assert shown["ssh_host"] in keygen.stdout, "same fingerprint as ssh-keygen prints"
    assert cli(home, "keys", "export").exit_code == 2, "which key must be said"


def test_partner_add_pins_exactly_the_typed_fingerprint(
    home: Home, partner_pgp: PartnerPgp
) -> None:
    code, err = partner_add(home, partner_pgp.public_key, "0" * 40)
    assert code == 23 and "not exactly" in err  # KeyProblem
    spaced = " ".join(partner_pgp.fingerprint[i : i + 4] for i in range(0, 40, 4)).lower()
    # As printed by gpg, typed in lower case:
    code, err = partner_add(home, partner_pgp.public_key, spaced)
    assert code == 0, err

    listed = json.loads(cli(home, "partner", "list", "--json").stdout)
    assert [p["id"] for p in listed] == [PARTNER_ID]
    assert listed[0]["openpgp_key"] == partner_pgp.fingerprint
    assert listed[0]["endpoint"] == "sftp://gbacro@127.0.0.1:2222"
    assert "[127.0.0.1]:2222 ssh-ed25519 " in home.known_hosts.read_text()
    assert all(
        (home.outbound / PARTNER_ID / kind).is_dir()
        for kind in ("conviction", "extradition", "request", "response")
    )
    code, err = partner_add(home, partner_pgp.public_key, partner_pgp.fingerprint)
    assert code == 20 and "already registered" in err  # PartnerError


def test_partner_add_refuses_a_file_with_an_extra_key(
    home: Home, short_tmp: Path, partner_pgp: PartnerPgp, templates: Templates
) -> None:
    other = templates.partner(short_tmp / "other-gnupg", "FR-CJN")
    try:
        both = short_tmp / "both.asc"
        both.write_text(partner_pgp.public_key.read_text() + other.public_key.read_text())
        code, err = partner_add(home, both, partner_pgp.fingerprint)
    finally:
        other.close()
    assert code == 23 and "not exactly" in err  # KeyProblem
    with gateway(home) as gw:
        assert gw.ledger.partners() == []


def test_partner_add_refuses_a_malformed_host_key(home: Home, partner_pgp: PartnerPgp) -> None:
    for bad in (
        "ssh-ed25519",
        "ssh-ed25519 AAAAbad",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "not a key",
    ):
        code, err = partner_add(home, partner_pgp.public_key, partner_pgp.fingerprint, host_key=bad)
        assert code == 23, bad  # KeyProblem
        assert err.startswith("error: --host-key") and err.count("\n") == 1, err
    assert not home.known_hosts.read_text()


def test_send_takes_a_copy_and_refuses_links(
    home: Home, partner_pgp: PartnerPgp, short_tmp: Path
) -> None:
    assert partner_add(home, partner_pgp.public_key, partner_pgp.fingerprint)[0] == 0
    source = short_tmp / "notice.xml"
    source.write_bytes(b"<notice/>")
    sent = cli(home, "send", str(source), "--to", PARTNER_ID, "--kind", "request", "--ref", "R-1")
    assert sent.exit_code == 0, sent.stderr
    pid = sent.stdout.strip()
    assert source.read_bytes() == b"<notice/>", "the original is left alone"

    shown = json.loads(cli(home, "ledger", "show", pid, "--json").stdout)
    assert shown["package"]["state"] == "received"
    assert shown["package"]["kind"] == "request"
    assert shown["package"]["reference"] == "R-1"
    assert [e["action"] for e in shown["events"]] == ["intake"]
    assert shown["events"][0]["category"] == "collection"

    link = short_tmp / "link.xml"
    link.symlink_to(source)
    refused = cli(home, "send", str(link), "--to", PARTNER_ID, "--kind", "request")
    assert refused.exit_code == 40 and "symbolic link" in refused.stderr  # InputRefused
    empty = short_tmp / "empty.xml"
    empty.touch()
    assert "empty" in cli(home, "send", str(empty), "--to", PARTNER_ID, "--kind", "request").stderr
    unknown = cli(home, "send", str(source), "--to", "FR-CJN", "--kind", "request")
    assert unknown.exit_code == 21 and "unknown partner FR-CJN" in unknown.stderr  # UnknownPartner
    with gateway(home) as gw:
        assert [p.state for p in gw.ledger.packages()] == [State.RECEIVED]
    assert len(list(home.work.iterdir())) == 1, "refused files leave nothing behind"


def test_status_and_ledger_list_agree(home: Home, partner_pgp: PartnerPgp, short_tmp: Path) -> None:
    assert partner_add(home, partner_pgp.public_key, partner_pgp.fingerprint)[0] == 0
    (short_tmp / "a.xml").write_bytes(b"a")
    for _ in range(3):
        assert (
            cli(
                home, "send", str(short_tmp / "a.xml"), "--to", PARTNER_ID, "--kind", "conviction"
            ).exit_code
            == 0
        )

    status = json.loads(cli(home, "status", "--json").stdout)
    listed = json.loads(cli(home, "ledger", "list", "--state", "received", "--json").stdout)

    [row] = status["partners"]
    assert row["partner"] == PARTNER_ID and row["queued"] == 3 and row["in_flight"] == 0
    assert len(listed) == 3
    assert cli(home, "ledger", "list", "--state", "delivered").stdout.strip() == "no packages"
    assert "queued" in cli(home, "status").stdout


def test_errors_are_one_line_without_traceback(short_tmp: Path) -> None:
    """Run as a real process: stderr is exactly one `error:` line, and the exit status of
    the error's class (no home here: 11)."""
    done = subprocess.run([sys.executable, "-m", "gateway", "--home", str(short_tmp), "status"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 11  # HomeMissing
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "gateway init" in done.stderr
    assert "Traceback" not in done.stderr

    bad = subprocess.run([sys.executable, "-m", "gateway", "ledger", "show"],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 2, "usage errors exit 2"


def test_ledger_show_refuses_a_malformed_id(home: Home) -> None:
    result = cli(home, "ledger", "show", "../../etc/passwd")
    assert result.exit_code == 2  # UsageError
    assert "not a package id" in result.stderr


def test_each_kind_of_error_exits_with_its_own_code(home: Home, short_tmp: Path) -> None:
    """A wrapper script tells the conditions apart by the exit status alone; each is still
    one `error:` line. The codes are part of the interface (docs/cli.md, Exit codes)."""
    unknown_package = new_package_id(GATEWAY_ID, 1_795_000_000.0)
    results = {
        "no home here": cli(short_tmp / "nowhere", "status"),
        "already a home": cli(home, "init", "--id", GATEWAY_ID),
        "no such package": cli(home, "ledger", "show", unknown_package),
        "not a package id": cli(home, "ledger", "show", "PACKAGE-1"),
        "unknown partner": cli(home, "partner", "show", PARTNER_ID),
    }
    with exclusive(home.lock):  # as a `gateway run` working on the home holds it
        results["another run holds the home"] = cli(home, "run", "--once")

    codes = {condition: result.exit_code for condition, result in results.items()}
    assert codes == {
        "no home here": 11,  # HomeMissing
        "already a home": 12,  # HomeExists
        "no such package": 30,  # NoSuchPackage
        "not a package id": 2,  # UsageError, as click's own usage errors
        "unknown partner": 21,  # UnknownPartner
        "another run holds the home": 13,  # HomeLocked
    }
    for condition, result in results.items():
        assert result.stderr.startswith("error: "), condition
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, condition
    assert unknown_package in results["no such package"].stderr
    assert "already working on this home" in results["another run holds the home"].stderr


def test_every_command_has_help_with_an_example() -> None:
    from gateway.cli import main

    def walk(group: Any, ctx: click.Context, prefix: str) -> list[tuple[str, Any]]:
        found = []
        for name in group.list_commands(ctx) if hasattr(group, "list_commands") else []:
            command = group.get_command(ctx, name)
            found.append((f"{prefix} {name}".strip(), command))
            found += walk(command, ctx, f"{prefix} {name}")
        return found

    commands = walk(main, click.Context(main), "")
    assert len(commands) > len(COMMANDS), "the walk must reach every command and subcommand"
    for name, command in commands:
        if hasattr(command, "list_commands"):
            continue
        text = str(getattr(command, "help", "") or "")
        assert "Example" in text and "gateway " in text, (
            f"`gateway {name}` has no example in its help"
        )


def test_every_command_module_is_listed_under_its_own_name() -> None:
    from gateway.cli import main

    modules = {p.stem.removesuffix("_cmd") for p in CLI.glob("*_cmd.py")}
    assert modules == set(COMMANDS), "a command module is missing from gateway.cli.COMMANDS"
    ctx = click.Context(main)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
    assert main.get_command(ctx, "nosuch") is None


def test_read_only_commands_load_no_transport_or_daemon() -> None:
    """`status` and `ledger list` start fast: paramiko alone cost 0.13 s of every run."""
    probe = (
        "import sys, click; from gateway.cli import main; ctx = click.Context(main); "
        "[main.get_command(ctx, name) for name in ('status', 'ledger')]; "
        "print(sorted(m for m in ('paramiko', 'watchdog', 'gateway.pipeline.daemon', 'gateway.admin.demo', "
        "'gateway.adapters.dropserver', 'gateway.adapters.sftp') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True, cwd=CLI.parent.parent)  # fmt: skip
    assert done.stdout.strip() == "[]", f"loaded by status or ledger: {done.stdout}"


def test_serve_runs_the_drop_server_until_sigterm(home: Home) -> None:
    """`gateway serve` on its own: it speaks SSH on the address given, and stops cleanly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "gateway", "--home", str(home.root), "serve", "--listen",
            f"127.0.0.1:{port}"]  # fmt: skip
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as process:  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                        banner = conn.recv(64)
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline, "the drop server never listened"
                    assert process.poll() is None, "gateway serve stopped"
                    time.sleep(0.05)
            assert banner.startswith(b"SSH-2.0-")
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=15)
            assert process.returncode == 0, err
        finally:
            if process.poll() is None:
                process.kill()
