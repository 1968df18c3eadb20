"""The composition root: one `Gateway` per command, built from the home, passed down.

No module keeps global state; everything a command touches hangs off this object and
is closed with it (the ledger connection, the keyring's gpg-agent).
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from gateway.adapters import sshkeys
from gateway.adapters.files import write_atomic
from gateway.adapters.gpg import KeyInfo, Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core import settings as settings_mod
from gateway.core.envelope import fingerprint as parse_fingerprint
from gateway.core.errors import HomeError, KeyProblem, PartnerError, UsageError
from gateway.core.model import Partner, utc
from gateway.core.names import authority_id

_SFTP_URL = re.compile(
    r"sftp://(?P<user>[A-Za-z0-9._-]{1,64})@(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]+\])(?::(?P<port>\d{1,5}))?/?"
)


def actor() -> str:
    """Who is acting: the OS account running the command, and who used sudo to run it.

    From the process's real user id, not $USER or $LOGNAME, which anyone can set.
    """
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid:{os.getuid()}"
    through = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {through})" if through and through != name else name


class Gateway:
    """Everything one command needs, built once from the home."""

    def __init__(self, home: Home, actor: str, clock: Callable[[], float] = time.time) -> None:
        home.require()
        self.home = home
        self.settings = settings_mod.load(home.settings)
        self.keyring = Keyring(home.gnupg, self.settings.gnupg_timeout_seconds)
        self.ledger = Ledger(home.ledger, actor, clock)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the ledger and stop the keyring's agent."""
        self.ledger.close()
        self.keyring.close()

    @property
    def own_key(self) -> str:
        """The fingerprint of the gateway's current OpenPGP key."""
        return self.own_key_info.fingerprint

    @property
    def own_key_info(self) -> KeyInfo:
        """The gateway's current OpenPGP key, as the keyring knows it."""
        fingerprint = self.ledger.own_key()
        if fingerprint is None:
            raise KeyProblem(
                "the ledger names no key of the gateway's own: restore ledger.db from backup"
            )
        return self.keyring.key(fingerprint)

    @classmethod
    def init(cls, home: Home, gateway_id: str, actor: str) -> Gateway:
        """Create a new home: settings, ledger, folders, OpenPGP key, SSH keys."""
        authority_id(gateway_id)
        if home.settings.exists() or home.ledger.exists() or home.gnupg.exists():
            raise HomeError(f"{home.root} is already a gateway home; nothing was changed")
        home.root.mkdir(parents=True, exist_ok=True)
        home.create_folders()
        settings = settings_mod.parse({"gateway": {"id": gateway_id}})
        try:
            keyring = Keyring.create(home.gnupg, settings.gnupg_timeout_seconds)
            try:
                fpr = keyring.generate(gateway_id, settings.gnupg_key_days)
            finally:
                keyring.stop_agent()
            ssh_line = sshkeys.generate(home.ssh_identity, f"{gateway_id} gateway")
            sshkeys.generate(home.host_key, f"{gateway_id} drop server")
            home.known_hosts.touch(mode=0o600)
            # gateway.toml last: its presence is what makes the folder a home.
            write_atomic(home.settings, settings_mod.render(gateway_id).encode(), mode=0o640)
            gw = cls(home, actor)
        except BaseException:
            home.remove_created()
            raise
        gw.ledger.record(
            "init", detail={"gateway_id": gateway_id, "ssh_key": sshkeys.fingerprint(ssh_line)}
        )
        gw.ledger.add_own_key(fpr, {"by": "init"})
        return gw

    def add_push_partner(
        self,
        partner_id: str,
        key_file: Path,
        fpr: str,
        url: str,
        host_key: str,
        reason: str,
        upload_dir: str = "upload",
        download_dir: str = "download",
        hide_recipient: bool = True,
    ) -> Partner:
        """Register a push partner: pin its OpenPGP key and SSH host key, make its folders."""
        partner_id, fpr = (
            authority_id(partner_id),
            parse_fingerprint(fpr.replace(" ", "").upper(), "--fingerprint"),
        )
        match = _SFTP_URL.fullmatch(url)
        if match is None:
            raise UsageError(f"{url!r} is not sftp://USER@HOST[:PORT]")
        port = int(match["port"] or 22)
        if not 0 < port < 65536:
            raise UsageError(f"port {port} is out of range")
        key_type, blob = sshkeys.parse_public(host_key, "--host-key")
        for folder in (upload_dir, download_dir):
            if not re.fullmatch(r"[A-Za-z0-9._/-]{1,200}", folder) or ".." in folder.split("/"):
                raise UsageError(f"{folder!r} is not a safe remote folder name")
        self._refuse_existing(partner_id)
        key = self.keyring.import_pinned(key_file, fpr)
        host = match["host"].strip("[]")
        line = f"{sshkeys.known_hosts_name(host, port)} {key_type} {blob}\n"
        existing = self.home.known_hosts.read_text() if self.home.known_hosts.exists() else ""
        write_atomic(self.home.known_hosts, (existing + line).encode())
        partner = Partner(
            id=partner_id, transport="push", openpgp_key=key.fingerprint,
            added_at=utc(self.ledger.clock()), host=host, port=port, user=match["user"],
            upload_dir=upload_dir, download_dir=download_dir, hide_recipient=int(hide_recipient),
        )  # fmt: skip
        self.ledger.add_partner(partner, reason)
        self.home.create_partner_folders(partner_id)
        return partner

    def add_pull_partner(self, partner_id: str, key_file: Path, fpr: str, ssh_key_file: Path,
                         reason: str, hide_recipient: bool = True) -> Partner:  # fmt: skip
        """Register a pull partner: pin its OpenPGP key and the SSH key it logs in with."""
        partner_id = authority_id(partner_id)
        fpr = parse_fingerprint(fpr.replace(" ", "").upper(), "--fingerprint")
        try:
            key_type, blob = sshkeys.parse_public(ssh_key_file.read_text(), "--ssh-key")
        except (OSError, UnicodeDecodeError):
            raise UsageError(f"cannot read the SSH key file {ssh_key_file}") from None
        self._refuse_existing(partner_id)
        key = self.keyring.import_pinned(key_file, fpr)
        partner = Partner(
            id=partner_id, transport="pull", openpgp_key=key.fingerprint,
            added_at=utc(self.ledger.clock()), ssh_key=f"{key_type} {blob}",
            hide_recipient=int(hide_recipient),
        )  # fmt: skip
        self.ledger.add_partner(partner, reason)
        self.home.create_partner_folders(partner_id)
        for folder in ("", "download", "upload"):
            (self.home.mailbox / partner_id / folder).mkdir(mode=0o700, exist_ok=True)
        return partner

    def rotate_partner_key(self, partner_id: str, key_file: Path, fpr: str, reason: str) -> KeyInfo:
        """Pin a partner's new OpenPGP key; new packages use it, the old one still verifies a while."""
        self.ledger.partner(partner_id)
        fpr = parse_fingerprint(fpr.replace(" ", "").upper(), "--fingerprint")
        key = self.keyring.import_pinned(key_file, fpr)
        self.ledger.rotate_partner_key(partner_id, key.fingerprint, reason)
        return key

    def rotate_own_key(self, reason: str) -> KeyInfo:
        """Make a new OpenPGP key for the gateway; it signs from now on.

        The old key stays in the keyring, so packages still addressed to it open.
        """
        fpr = self.keyring.generate(self.settings.gateway_id, self.settings.gnupg_key_days)
        self.ledger.add_own_key(
            fpr, {"by": "keys rotate", "reason": reason, "previous": self.own_key}
        )
        return self.keyring.key(fpr)

    def set_host_key(self, partner_id: str, host_key: str, reason: str) -> str:
        """Pin a push partner's new SSH host key (confirmed out of band); return its fingerprint."""
        partner = self.ledger.partner(partner_id)
        if partner.transport != "push" or not partner.host or not partner.port:
            raise PartnerError(f"{partner_id} is not a push partner: it has no server to pin")
        key_type, blob = sshkeys.parse_public(host_key, "--host-key")
        name = sshkeys.known_hosts_name(partner.host, partner.port)
        old = self.host_key_of(partner)
        kept = [
            line
            for line in self.home.known_hosts.read_text().splitlines()
            if line.split()[:1] != [name]
        ]
        write_atomic(
            self.home.known_hosts,
            "".join(f"{line}\n" for line in [*kept, f"{name} {key_type} {blob}"]).encode(),
        )
        new = sshkeys.fingerprint(f"{key_type} {blob}")
        self.ledger.record("partner.host-key", partner=partner_id, detail={
            "reason": reason, "old": sshkeys.fingerprint(old) if old else None, "new": new})  # fmt: skip
        return new

    def _refuse_existing(self, partner_id: str) -> None:
        if any(p.id == partner_id for p in self.ledger.partners()):
            raise PartnerError(
                f"partner {partner_id} is already registered: see `gateway partner show {partner_id}`"
            )
        if partner_id == self.settings.gateway_id:
            raise PartnerError(f"{partner_id} is this gateway's own id")

    def host_key_of(self, partner: Partner) -> str | None:
        """The SSH host key pinned for a push partner, as 'TYPE BASE64'."""
        if not partner.host or not partner.port or not self.home.known_hosts.exists():
            return None
        name = sshkeys.known_hosts_name(partner.host, partner.port)
        for line in self.home.known_hosts.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == name:
                return f"{fields[1]} {fields[2]}"
        return None
