"""Registering partners and pinning what identifies them: OpenPGP keys and SSH host keys.

Every change is an audited event with the operator's reason; nothing is pinned that
the operator did not type or confirm (a key file must hold exactly the fingerprint
given).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from gateway.adapters import sshkeys
from gateway.adapters.files import write_atomic
from gateway.adapters.gpg import KeyInfo
from gateway.app.gateway import Gateway
from gateway.core.envelope import fingerprint as parse_fingerprint
from gateway.core.errors import PartnerError, UsageError
from gateway.core.model import Partner, utc
from gateway.core.names import authority_id

_SFTP_URL: Final = re.compile(
    r"sftp://(?P<user>[A-Za-z0-9._-]{1,64})@(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:]+\])(?::(?P<port>\d{1,5}))?/?"
)


def add_push(
    gw: Gateway,
    partner_id: str,
    key_file: Path,
    fpr: str,
    url: str,
    host_key: str,
    reason: str,
    upload_dir: str = "upload",
    download_dir: str = "download",
    hide_recipient: bool = True,
    approval: str | None = None,
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
    _refuse_existing(gw, partner_id)
    key = gw.keyring.import_pinned(key_file, fpr)
    host = match["host"].strip("[]")
    line = f"{sshkeys.known_hosts_name(host, port)} {key_type} {blob}\n"
    existing = gw.home.known_hosts.read_text() if gw.home.known_hosts.exists() else ""
    write_atomic(gw.home.known_hosts, (existing + line).encode())
    partner = Partner(
        id=partner_id, transport="push", openpgp_key=key.fingerprint,
        added_at=utc(gw.clock.now()), host=host, port=port, user=match["user"],
        upload_dir=upload_dir, download_dir=download_dir, hide_recipient=int(hide_recipient),
        approval=approval,
    )  # fmt: skip
    gw.ledger.add_partner(partner, reason)
    gw.home.create_partner_folders(partner_id)
    return partner


def add_pull(gw: Gateway, partner_id: str, key_file: Path, fpr: str, ssh_key_file: Path,
             reason: str, hide_recipient: bool = True, approval: str | None = None) -> Partner:  # fmt: skip
    """Register a pull partner: pin its OpenPGP key and the SSH key it logs in with."""
    partner_id = authority_id(partner_id)
    fpr = parse_fingerprint(fpr.replace(" ", "").upper(), "--fingerprint")
    try:
        key_type, blob = sshkeys.parse_public(ssh_key_file.read_text(), "--ssh-key")
    except (OSError, UnicodeDecodeError):
        raise UsageError(f"cannot read the SSH key file {ssh_key_file}") from None
    _refuse_existing(gw, partner_id)
    key = gw.keyring.import_pinned(key_file, fpr)
    partner = Partner(
        id=partner_id, transport="pull", openpgp_key=key.fingerprint,
        added_at=utc(gw.clock.now()), ssh_key=f"{key_type} {blob}",
        hide_recipient=int(hide_recipient), approval=approval,
    )  # fmt: skip
    gw.ledger.add_partner(partner, reason)
    gw.home.create_partner_folders(partner_id)
    for folder in ("", "download", "upload"):
        (gw.home.mailbox / partner_id / folder).mkdir(mode=0o700, exist_ok=True)
    return partner


def rotate_key(gw: Gateway, partner_id: str, key_file: Path, fpr: str, reason: str) -> KeyInfo:
    """Pin a partner's new OpenPGP key; new packages use it, the old one still verifies a while."""
    gw.ledger.partner(partner_id)
    fpr = parse_fingerprint(fpr.replace(" ", "").upper(), "--fingerprint")
    key = gw.keyring.import_pinned(key_file, fpr)
    gw.ledger.rotate_partner_key(partner_id, key.fingerprint, reason)
    return key


def set_host_key(gw: Gateway, partner_id: str, host_key: str, reason: str) -> str:
    """Pin a push partner's new SSH host key (confirmed out of band); return its fingerprint."""
    partner = gw.ledger.partner(partner_id)
    if partner.transport != "push" or not partner.host or not partner.port:
        raise PartnerError(f"{partner_id} is not a push partner: it has no server to pin")
    key_type, blob = sshkeys.parse_public(host_key, "--host-key")
    name = sshkeys.known_hosts_name(partner.host, partner.port)
    old = host_key_of(gw, partner)
    kept = [
        line for line in gw.home.known_hosts.read_text().splitlines() if line.split()[:1] != [name]
    ]
    write_atomic(
        gw.home.known_hosts,
        "".join(f"{line}\n" for line in [*kept, f"{name} {key_type} {blob}"]).encode(),
    )
    new = sshkeys.fingerprint(f"{key_type} {blob}")
    gw.ledger.record("partner.host-key", partner=partner_id, detail={
        "reason": reason, "old": sshkeys.fingerprint(old) if old else None, "new": new})  # fmt: skip
    return new


def set_approval(gw: Gateway, partner_id: str, approval: str | None, reason: str) -> None:
    """Name the kinds of a partner's packages that wait for a second operator (None: none).

    Packages already taken in keep the state they were given.
    """
    old = gw.ledger.partner(partner_id).approval
    gw.ledger.update_partner(partner_id, "partner.approval",
                             {"reason": reason, "old": old, "new": approval}, approval=approval)  # fmt: skip


def host_key_of(gw: Gateway, partner: Partner) -> str | None:
    """The SSH host key pinned for a push partner, as 'TYPE BASE64'."""
    if not partner.host or not partner.port or not gw.home.known_hosts.exists():
        return None
    name = sshkeys.known_hosts_name(partner.host, partner.port)
    for line in gw.home.known_hosts.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == name:
            return f"{fields[1]} {fields[2]}"
    return None


def _refuse_existing(gw: Gateway, partner_id: str) -> None:
    if any(p.id == partner_id for p in gw.ledger.partners()):
        raise PartnerError(
            f"partner {partner_id} is already registered: see `gateway partner show {partner_id}`"
        )
    if partner_id == gw.settings.gateway_id:
        raise PartnerError(f"{partner_id} is this gateway's own id")
