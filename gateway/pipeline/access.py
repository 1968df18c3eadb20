"""Who may log in to the drop server, and what it reports: the drop server's `Hooks`.

Only a registered pull partner that is not disabled logs in, with the SSH key it
registered; it sees its own mailbox. The drop server's threads only report (a file
read whole, a file uploaded) and wake the daemon; the ledger work happens in the
partner's next turn.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

from gateway.adapters.dropserver import Hooks
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.sshkeys import parse_public
from gateway.core.errors import UnknownPartner
from gateway.core.model import Partner
from gateway.pipeline.steps import closed
from gateway.transports.pull import Reads


def hooks(home: Home, ledger: Ledger, reads: Reads, wake: Callable[[], None]) -> Hooks:
    """The drop server's view of this home's pull partners."""

    def pull_partner(partner_id: str) -> Partner | None:
        try:
            partner = ledger.partner(partner_id)
        except UnknownPartner:
            return None
        return partner if partner.transport == "pull" else None

    def mailbox(partner_id: str) -> Path | None:
        return home.mailbox / partner_id if pull_partner(partner_id) else None

    def authorized_key(partner_id: str) -> bytes | None:
        partner = pull_partner(partner_id)
        if partner is None or closed(partner) or not partner.ssh_key:
            return None
        return base64.b64decode(parse_public(partner.ssh_key)[1])

    def downloaded(partner_id: str, name: str) -> None:
        reads.add(partner_id, name)
        ledger.contact(partner_id, None)  # a pull partner's health: its visits
        wake()

    def uploaded(partner_id: str, name: str) -> None:
        ledger.contact(partner_id, None)
        wake()

    return Hooks(mailbox=mailbox, authorized_key=authorized_key, downloaded=downloaded,
                 uploaded=uploaded)  # fmt: skip
