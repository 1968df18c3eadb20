"""Push partners: the partner's own SFTP server, reached with the SFTP client.

Every call goes over one kept session (`gateway.adapters.sessions`); the client itself
(pinned host keys, deadlines, hidden `.part` names renamed into place) is
`gateway.adapters.sftp`. See `base.py` for the contract.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from gateway.adapters.sessions import SessionPool
from gateway.adapters.sftp import Endpoint, RemotePart, SftpPartner
from gateway.core.errors import GatewayError
from gateway.core.lifecycle import State
from gateway.core.model import Arrival, Outgoing, Partner, Placed, Wanted
from gateway.core.names import WIRE_NAME
from gateway.core.settings import Settings

log = logging.getLogger("gateway")
#: Files taken from one partner in one turn; the rest wait for the next.
MAX_FILES_PER_POLL: Final = 500


def endpoint(partner: Partner) -> Endpoint:
    """Where and as whom the gateway logs in to a push partner."""
    assert partner.host and partner.port and partner.user
    return Endpoint(partner.host, partner.port, partner.user, partner.upload_dir or "upload",
                    partner.download_dir or "download", bool(partner.ssh_legacy))  # fmt: skip


class PushTransport:
    """A push partner's SFTP server."""

    placed = State.DELIVERED
    remote = True

    def __init__(self, partner: Partner, sessions: SessionPool) -> None:
        self.partner = partner
        self.endpoint = endpoint(partner)
        self.sessions = sessions

    @contextlib.contextmanager
    def link(self) -> Iterator[PushLink]:
        """The partner's kept session, or a new one; kept after the turn unless it broke."""
        with self.sessions.connected(self.endpoint) as sftp:
            yield PushLink(self.partner.id, sftp)

    def read_whole(self) -> list[str]:
        """Nothing to report: a package on the partner's server is delivered when placed."""
        return []

    def poll_seconds(self, settings: Settings) -> float:
        """A remote server is looked at every `daemon.poll_seconds`."""
        return float(settings.daemon_poll_seconds)


class PushLink:
    """One turn over one SFTP session."""

    def __init__(self, partner_id: str, sftp: SftpPartner) -> None:
        self.partner_id = partner_id
        self.sftp = sftp
        e = sftp.endpoint
        self.where = f"sftp://{e.user}@{e.host}:{e.port}/{e.upload_dir}"

    def deliver(self, files: list[Outgoing]) -> list[Placed | GatewayError]:
        """Upload each under a hidden name, then rename it into place."""
        return self.sftp.put_all(files)

    answer = deliver

    def open_part(self, name: str) -> RemotePart:
        """Open the hidden `.part` file for an upload beside gpg."""
        return self.sftp.open_part(name)

    def place(self, name: str, size: int, sha256: str) -> Placed:
        """Rename a whole part into place."""
        return self.sftp.place(name, size, sha256)

    def collect(self) -> list[Arrival]:
        """Files of the contract in the download folder, at most MAX_FILES_PER_POLL."""
        listing = self.sftp.list_download()
        wanted = [f for f in listing if WIRE_NAME.fullmatch(f.name)]
        if skipped := len(listing) - len(wanted):
            log.warning("poll of %s: %d files with names outside the contract left alone",
                        self.partner_id, skipped)  # fmt: skip
        return wanted[:MAX_FILES_PER_POLL]

    def fetch(self, wanted: list[Wanted]) -> list[Path | GatewayError]:
        """Download each whole or not at all."""
        return self.sftp.fetch_all(wanted)

    def remove(self, arrivals: list[Arrival]) -> list[GatewayError | None]:
        """Remove from the partner's download folder."""
        return list(self.sftp.remove_downloads([a.name for a in arrivals]))
