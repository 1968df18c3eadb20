"""Protected keys: a passphrase on the gateway's OpenPGP and SSH keys, given to the daemon
as a systemd credential or a 0400 file, and never shown anywhere."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.adapters import sshkeys
from gateway.adapters.home import Home
from gateway.adapters.passphrase import Passphrase
from gateway.core.errors import HomeLocked, PassphraseMissing, PassphraseWrong
from gateway.core.lifecycle import State
from tests.helpers import (
    PARTNER_ID,
    PAYLOAD,
    PAYLOAD_NAME,
    Desk,
    PartnerPgp,
    cli,
    envelope,
    gateway,
    leave,
    manifest,
    only_quarantined,
    open_our_receipt,
    partner_pid,
    processes_under,
    seal,
    send,
    set_setting,
    state,
    wait_for,
)
from tests.sshd import SshServer

Exchange = tuple[Home, PartnerPgp, SshServer]


@pytest.fixture
def passphrase() -> str:
    """A passphrase no log line, file or process could hold by chance."""
    return "pp-" + secrets.token_hex(16)


@pytest.fixture
def credentials(short_tmp: Path, passphrase: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$CREDENTIALS_DIRECTORY as systemd makes it for LoadCredentialEncrypted=gateway-passphrase."""
    folder = short_tmp / "credentials"
    folder.mkdir(mode=0o700)
    credential = folder / "gateway-passphrase"
    credential.write_text(passphrase + "\n")  # as `echo ... | systemd-creds encrypt` leaves it
    credential.chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    return folder


@pytest.fixture
def protected(exchange: Exchange, credentials: Path) -> Exchange:
    """The exchange, its gateway's keys protected with `keys protect` from the credential."""
    home = exchange[0]
    conf = home.gnupg / "gpg-agent.conf"  # as a home made before keys could be protected
    conf.write_text("default-cache-ttl 0\nmax-cache-ttl 0\n")
    result = cli(home, "keys", "protect", "--reason", "keys at rest")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("protected ") == 3  # the OpenPGP key and both SSH keys
    return exchange


def keys_protected(home: Home) -> bool:
    """Whether every secret key of the home is protected, read from the key files."""
    with gateway(home) as gw:
        return all(gw.keyring.protected(fpr) for fpr in gw.ledger.own_keys()) and all(
            sshkeys.encrypted(p) for p in (home.ssh_identity, home.host_key)
        )


def send_one(home: Home, tmp: Path, name: str = "notice.xml") -> str:
    source = tmp / name
    source.write_bytes(b"<conviction>fictional</conviction>\n")
    return send(home, source)


def test_keys_protect_then_run_once_delivers_with_the_credential(
    protected: Exchange, short_tmp: Path
) -> None:
    home, pgp, server = protected
    assert keys_protected(home)
    key_files = list((home.gnupg / "private-keys-v1.d").glob("*.key"))
    assert len(key_files) == 2  # the key derivation the gateway set, not the agent's own
    assert all(b'"1048576")' in f.read_bytes() for f in key_files)
    with gateway(home) as gw:
        fpr = gw.own_key
        assert [e.action for e in gw.ledger.events()][-1] == "keys.protect"
    pid = send_one(home, short_tmp)

    result = cli(home, "run", "--once")

    assert result.exit_code == 0, result.stderr
    assert state(home, pid) is State.DELIVERED
    plain, status = pgp.decrypt(server.upload / f"{pid}.pgp")
    assert any(line.startswith("VALIDSIG ") and line.endswith(fpr) for line in status)
    assert b"<conviction>fictional</conviction>" in plain


def test_an_inbound_package_opens_and_is_receipted_with_protected_keys(
    desk: Desk, credentials: Path
) -> None:
    """Decryption and the signed receipt need the secret key too."""
    assert cli(desk.home, "keys", "protect", "--reason", "keys at rest").exit_code == 0
    pid = partner_pid()
    leave(desk, f"{pid}.pgp", seal(desk, envelope(manifest(desk, pid))))

    result = cli(desk.home, "run", "--once")

    assert result.exit_code == 0, result.stderr
    assert (desk.home.inbound / PARTNER_ID / pid / PAYLOAD_NAME).read_bytes() == PAYLOAD
    assert state(desk.home, pid) is State.ACCEPTED
    assert open_our_receipt(desk, pid)["disposition"] == "accepted"


@pytest.mark.parametrize("protect", [False, True], ids=["plain-keys", "protected-keys"])
def test_a_package_encrypted_with_a_passphrase_is_refused_not_taken_for_the_hosts_trouble(
    desk: Desk, credentials: Path, protect: bool
) -> None:
    """gpg asks for a passphrase for it too: that must not read as our key wanting one."""
    if protect:
        assert cli(desk.home, "keys", "protect", "--reason", "keys at rest").exit_code == 0
    pid = partner_pid()
    plain = envelope(manifest(desk, pid))
    wire = desk.pgp.gpg("--symmetric", "--passphrase", "a-guess-at-anything-at-all",
                        "--output", "-", input=plain).stdout  # fmt: skip
    leave(desk, f"{pid}.pgp", wire)

    result = cli(desk.home, "run", "--once")

    assert result.exit_code == 0, result.stderr
    report, kept = only_quarantined(desk.home)
    assert "encrypted with a passphrase, not to this gateway's key" in report["reason"], report
    assert kept == wire
    assert not (desk.home.inbound / PARTNER_ID / pid).exists()


def test_without_the_passphrase_run_refuses_and_says_how_to_give_it(
    protected: Exchange, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _, server = protected
    pid = send_one(home, short_tmp)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")

    result = cli(home, "run", "--once")

    assert result.exit_code == PassphraseMissing.exit_code == 26
    assert result.stderr == (
        "error: the gateway's keys are protected by a passphrase and none was given: give it "
        "as the systemd credential gateway-passphrase (LoadCredentialEncrypted= in the unit), "
        "or set passphrase.file in gateway.toml to a file of mode 0400 owned by "
        f"{pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    assert state(home, pid) is State.RECEIVED  # nothing sealed, nothing held
    assert os.listdir(server.upload) == []
    # The service itself stops at once, with the same line and code.
    daemon = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), "run"],
                            capture_output=True, timeout=60, env=dict(os.environ))  # fmt: skip
    assert daemon.returncode == 26
    assert daemon.stderr.decode().splitlines()[-1] == result.stderr.rstrip("\n")


def test_a_wrong_passphrase_is_refused_before_anything_is_done(
    protected: Exchange, credentials: Path, short_tmp: Path
) -> None:
    home, _, server = protected
    pid = send_one(home, short_tmp)
    credential = credentials / "gateway-passphrase"
    credential.chmod(0o600)
    credential.write_text("not-the-passphrase-of-these-keys\n")

    result = cli(home, "run", "--once")

    assert result.exit_code == PassphraseWrong.exit_code == 27
    assert result.stderr.startswith("error: the passphrase given does not open the gateway's")
    assert "not-the-passphrase" not in result.stderr
    credential.write_text("short\n")
    short = cli(home, "run", "--once")
    assert short.exit_code == 26
    assert short.stderr == (
        f"error: the passphrase in {credential} is shorter than 20 characters: use a random "
        "one, e.g. `head -c 32 /dev/urandom | base64`\n"
    )
    assert state(home, pid) is State.RECEIVED
    assert os.listdir(server.upload) == []


def test_a_passphrase_file_must_be_0400_and_owned_by_the_gateways_user(
    protected: Exchange, passphrase: str, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _, server = protected
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    secret = short_tmp / "passphrase"
    secret.write_text(passphrase)
    set_setting(home, "passphrase.file", str(secret))
    pid = send_one(home, short_tmp)

    secret.chmod(0o640)
    loose = cli(home, "run", "--once")
    assert loose.exit_code == 26
    assert loose.stderr == (
        f"error: the passphrase file {secret} has mode 0640, not 0400, so it was not read: "
        f"`chmod 0400 {secret}`\n"
    )
    secret.chmod(0o400)
    link = short_tmp / "passphrase-link"
    link.symlink_to(secret)
    set_setting(home, "passphrase.file", str(link))
    linked = cli(home, "run", "--once")
    assert linked.exit_code == 26
    assert "cannot be opened" in linked.stderr and "a link is refused" in linked.stderr
    set_setting(home, "passphrase.file", str(secret))
    if os.geteuid() == 0:  # only root can give the file away
        os.chown(secret, pwd.getpwnam("nobody").pw_uid, -1)
        foreign = cli(home, "run", "--once")
        assert foreign.exit_code == 26
        assert foreign.stderr == (
            f"error: the passphrase file {secret} is owned by nobody, not by root who runs the "
            f"gateway, so it was not read: `chown root {secret}`\n"
        )
        os.chown(secret, 0, -1)
    assert state(home, pid) is State.RECEIVED

    result = cli(home, "run", "--once")

    assert result.exit_code == 0, result.stderr
    assert state(home, pid) is State.DELIVERED
    assert os.listdir(server.upload) == [f"{pid}.pgp"]


def test_init_protect_and_rotation_keep_every_key_protected(
    short_tmp: Path, credentials: Path
) -> None:
    home = Home(short_tmp / "gw")
    made = cli(home, "init", "--id", "GB-ACRO", "--protect")
    assert made.exit_code == 0, made.stderr
    assert keys_protected(home)

    rotated = cli(home, "keys", "rotate", "--reason", "annual")
    assert rotated.exit_code == 0, rotated.stderr
    with gateway(home) as gw:
        assert len(gw.ledger.own_keys()) == 2
    assert keys_protected(home)  # the new key too
    assert cli(home, "audit", "checkpoint").exit_code == 0
    assert cli(home, "audit", "verify").exit_code == 0


def test_init_protect_without_a_passphrase_creates_nothing(short_tmp: Path) -> None:
    home = Home(short_tmp / "gw")
    made = cli(home, "init", "--id", "GB-ACRO", "--protect")
    assert made.exit_code == 26
    assert "none was given" in made.stderr
    assert not home.settings.exists() and not home.gnupg.exists()


def test_keys_protect_waits_for_the_daemon_to_stop(exchange: Exchange, credentials: Path) -> None:
    home = exchange[0]
    from gateway.adapters.lock import exclusive

    with exclusive(home.lock):
        result = cli(home, "keys", "protect", "--reason", "keys at rest")
    assert result.exit_code == HomeLocked.exit_code
    assert not keys_protected(home)


class ProcessWatch:
    """Reads the command line and environment of every process of a tree, over and over,
    while the test runs: what `ps` and /proc show anyone on the host."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.seen: dict[int, tuple[bytes, bytes]] = {}
        self.root_pid = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-watch")

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _tree(self) -> set[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        tree = {self.root_pid} if self.root_pid else set()
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        for root in self.roots:  # gpg-agent leaves the tree: it is found by its home
            tree.update(processes_under(root))
        return tree

    def gpg_runs(self, given: bool) -> list[bytes]:
        """Command lines of the gpg runs seen (`given`: those told to read a passphrase from
        a descriptor: their stdin, or a pipe of its own beside the data)."""
        runs = [cmd for cmd, _ in list(self.seen.values()) if cmd.split(b"\0")[0].endswith(b"gpg")]
        return [cmd for cmd in runs if not given or b"--passphrase-fd\x00" in cmd]

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._tree():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                if cmdline:
                    self.seen[pid] = (cmdline, environ)


def test_the_passphrase_is_never_on_a_command_line_in_an_environment_or_a_log(
    protected: Exchange, passphrase: str, short_tmp: Path
) -> None:
    home, _, server = protected
    set_setting(home, "daemon.settle_seconds", 1)
    set_setting(home, "audit.checkpoint_seconds", 1)
    log = short_tmp / "daemon.log"
    pids = [send_one(home, short_tmp, f"n{i}.xml") for i in range(3)]
    with ProcessWatch([home.gnupg]) as watch, log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--home", str(home.root), "--debug", "run"],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        watch.root_pid = daemon.pid
        try:
            wait_for(lambda: all(state(home, p) is State.DELIVERED for p in pids), 120,
                     "the packages delivered")  # fmt: skip
            # A checkpoint is signed every second: go on until a gpg run was caught.
            wait_for(lambda: bool(watch.gpg_runs(given=True)), 60, "a gpg run to be seen")
        finally:
            daemon.terminate()
            assert daemon.wait(30) == 0

    secret = passphrase.encode()
    assert watch.gpg_runs(given=True), f"no gpg run given the passphrase was seen: {watch.seen}"
    assert any(b"gpg-agent" in cmd for cmd, _ in watch.seen.values()), "the agent was seen"
    for pid, (cmdline, environ) in watch.seen.items():
        assert secret not in cmdline, f"process {pid}'s command line holds the passphrase"
        assert secret not in environ, f"process {pid}'s environment holds the passphrase"
    text = log.read_bytes()
    assert b"daemon started" in text and secret not in text
    assert sorted(os.listdir(server.upload)) == sorted(f"{p}.pgp" for p in pids)
    for path in home.root.rglob("*"):  # the ledger, its WAL, the logs, checkpoints, settings
        if path.is_file() and not path.is_relative_to(home.gnupg):
            assert secret not in path.read_bytes(), f"{path} holds the passphrase"


def test_the_drop_server_opens_its_protected_host_key_only_with_the_passphrase(
    protected: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = protected[0]
    shown = sshkeys.fingerprint(home.host_key_pub.read_text())
    with gateway(home) as gw:
        server = gw.drop_server("127.0.0.1:0")  # built, not started
        assert server.host_key.fingerprint == shown
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with gateway(home) as gw, pytest.raises(PassphraseMissing):
        gw.drop_server("127.0.0.1:0")
    assert cli(home, "serve", "--listen", "127.0.0.1:0").exit_code == 26


def test_doctor_tells_and_keys_protect_finishes_what_an_interrupted_run_left(
    exchange: Exchange, credentials: Path, passphrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = exchange[0]
    found = cli(home, "doctor", "--offline").stdout.splitlines()
    assert (
        "warn the gateway's secret keys have no passphrase: a copy of keys/ can sign as this "
        "office: `gateway keys protect` (operator guide, section 8)"
    ) in found
    sshkeys.protect(home.ssh_identity, Passphrase(passphrase))  # as an interrupted run left it
    with gateway(home) as gw:
        fpr = gw.own_key

    result = cli(home, "keys", "protect", "--reason", "keys at rest")

    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"protected OpenPGP key {fpr}",
        "protected SSH key host_ed25519",
    ]
    assert keys_protected(home)
    doctor = cli(home, "doctor", "--offline")
    assert doctor.exit_code == 0, doctor.stdout
    assert (
        "ok   the keys are protected, and the passphrase given opens them"
        in doctor.stdout.splitlines()
    )
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    doctor = cli(home, "doctor", "--offline")
    assert doctor.exit_code == 1
    [failing] = [line for line in doctor.stdout.splitlines() if line.startswith("fail")]
    assert failing.startswith(
        "fail the keys are protected: the gateway's keys are protected by a passphrase and none "
        "was given: give it as the systemd credential gateway-passphrase"
    )
