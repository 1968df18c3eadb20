"""Delivery to push partners: `sealed` -> `delivered`, over one SFTP session per batch.

Checkpoint, then act: the attempt is recorded before the upload starts; the remote name
is fixed by the package id, and `put_atomic` treats a target already holding the same
bytes as delivered, so a delivery cut off at any instant is finished, never repeated
under a second name.
"""

from __future__ import annotations

from gateway.errors import GatewayError, PartnerError, Transient
from gateway.home import Home
from gateway.ledger import Ledger
from gateway.lifecycle import State
from gateway.names import wire_name
from gateway.records import Package, Partner, utc
from gateway.retry import Retry
from gateway.settings import Settings
from gateway.sftp import Endpoint, SftpPartner


class Deliverer:
    """Pushes sealed packages to a partner's SFTP server."""

    def __init__(self, home: Home, ledger: Ledger, settings: Settings, retry: Retry) -> None:
        self.home = home
        self.ledger = ledger
        self.settings = settings
        self.retry = retry

    def session(self, partner: Partner) -> SftpPartner:
        """A new (not yet open) SFTP session with a push partner."""
        assert partner.host and partner.port and partner.user
        endpoint = Endpoint(
            partner.host,
            partner.port,
            partner.user,
            partner.upload_dir or "upload",
            partner.download_dir or "download",
        )
        return SftpPartner(
            endpoint,
            self.home.ssh_identity,
            self.home.known_hosts,
            self.settings.sftp_connect_timeout_seconds,
            self.settings.sftp_io_timeout_seconds,
        )

    def deliver(self, partner: Partner, packages: list[Package]) -> None:
        """Deliver `packages` (all sealed, all for `partner`) over one session.

        A failure to connect sets back the whole batch; a failure during one upload sets
        back that package and the rest (the session is gone); a conflict holds one package.
        """
        if not partner.enabled:
            self.retry.setback_all(packages, PartnerError(f"partner {partner.id} is disabled"))
            return
        try:
            with self.session(partner) as sftp:
                for i, package in enumerate(packages):
                    try:
                        self.deliver_one(sftp, package)
                    except Transient as err:
                        self.retry.setback_all(packages[i:], err)
                        return
                    except GatewayError as err:
                        self.retry.setback(package, err)
        except GatewayError as err:
            self.retry.setback_all(packages, err)

    def deliver_one(self, sftp: SftpPartner, package: Package) -> Package:
        """Upload one sealed package and record it delivered."""
        pid = package.package_id
        self.ledger.note(pid, "deliver.attempt", {"endpoint": _where(sftp)})
        uploaded = sftp.put_atomic(
            self.home.sealed_file(pid), wire_name(pid), str(package.ciphertext_sha256)
        )
        return self.ledger.transition(
            pid,
            State.DELIVERED,
            "deliver",
            {
                "endpoint": _where(sftp),
                "path": uploaded.path,
                "already_there": uploaded.already_there,
                "recipient_key": package.recipient_key,
                "ciphertext_sha256": package.ciphertext_sha256,
            },
            next_attempt_at=None,
            last_error=None,
            delivered_at=utc(self.ledger.clock()),
        )


def _where(sftp: SftpPartner) -> str:
    e = sftp.endpoint
    return f"sftp://{e.user}@{e.host}:{e.port}/{e.upload_dir}"
