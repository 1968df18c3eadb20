"""Pull partners: the partner's mailbox on the gateway's own drop server.

`spool/mailbox/<PARTNER>/download/` holds what the partner may fetch; a package placed
there is `published`, and `delivered` once the partner has read it whole (the drop
server reports that, on its own threads, into `Reads`; the partner's next turn records
it). `upload/` holds the files the partner put there, complete ones only: a turn first
moves them into the gateway's own `spool/incoming/<PARTNER>/`, where whatever waits (a
handling that trouble or a crash cut short) is handled again until its outcome is
recorded. See `base.py` for the contract.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from gateway.adapters.files import publish, sha256_file
from gateway.core.errors import GatewayError, RemoteConflict, TransferFailed
from gateway.core.lifecycle import State
from gateway.core.model import Arrival, Outgoing, Placed, Wanted
from gateway.core.names import WIRE_NAME, is_temporary
from gateway.core.settings import Settings


class Reads:
    """Files the drop server saw read whole, per partner, until the partner's turn takes them."""

    def __init__(self) -> None:
        self._names: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def add(self, partner_id: str, name: str) -> None:
        """Note that `partner_id` read `name` whole and closed it."""
        with self._lock:
            self._names.setdefault(partner_id, []).append(name)

    def take(self, partner_id: str) -> list[str]:
        """The names read since the last call, forgotten here."""
        with self._lock:
            return self._names.pop(partner_id, [])


class PullTransport:
    """A pull partner's mailbox."""

    placed = State.PUBLISHED
    remote = False  # its health is its own visits to the drop server (`access.py`)

    def __init__(self, partner_id: str, mailbox: Path, incoming: Path, reads: Reads) -> None:
        self.partner_id = partner_id
        self.mailbox = mailbox
        self.incoming = incoming
        self.reads = reads

    @contextlib.contextmanager
    def link(self) -> Iterator[PullLink]:
        """The mailbox is a local folder: there is nothing to open."""
        yield PullLink(self.mailbox, self.incoming)

    def read_whole(self) -> list[str]:
        """Package ids the partner read whole since the last call."""
        matches = (WIRE_NAME.fullmatch(n) for n in self.reads.take(self.partner_id))
        return [m["pid"] for m in matches if m and m["suffix"] == ".pgp"]

    def poll_seconds(self, settings: Settings) -> float:
        """A local folder costs next to nothing to look at: every second. (At 0, each
        turn's end woke the daemon for the next one: 11,069 turns in 3 s.)"""
        return 1.0


class PullLink:
    """One turn with a mailbox."""

    where = "/download"

    def __init__(self, mailbox: Path, incoming: Path) -> None:
        self.download = mailbox / "download"
        self.upload = mailbox / "upload"
        self.incoming = incoming

    def deliver(self, files: list[Outgoing]) -> list[Placed | GatewayError]:
        """Copy each into the download folder under a hidden name, then rename it into place."""
        outcomes: list[Placed | GatewayError] = []
        for f in files:
            try:
                outcomes.append(self._copy(f.local, f.name, f.sha256))
            except GatewayError as err:
                outcomes.append(err)
        return outcomes

    answer = deliver

    def _copy(self, local: Path, name: str, sha256: str) -> Placed:
        final = self.download / name
        if final.exists():
            if sha256_file(final) != sha256:
                raise RemoteConflict(f"the mailbox already holds {name} with other content; "
                                     "nothing was overwritten: remove it, then `gateway retry`")  # fmt: skip
            return Placed(f"/download/{name}", already_there=True)
        tmp = self.download / f".{name}.tmp"
        shutil.copyfile(local, tmp)
        publish(tmp, final)
        return Placed(f"/download/{name}", already_there=False)

    def open_part(self, name: str) -> None:
        """A copy within the host gains nothing from the overlap: seal first."""
        return None

    def place(self, name: str, size: int, sha256: str) -> Placed:
        """Never called: no part is ever opened."""
        raise TransferFailed(f"no part of {name} was opened in the mailbox")

    def collect(self) -> list[Arrival]:
        """Take the complete uploads into the gateway's custody; list all that wait there.

        Every finished file is taken, names outside the contract too: the pipeline
        quarantines those from `spool/incoming`, so nothing is left in the mailbox for ever.
        A temporary name (the partner's own part, an upload in flight) stays until renamed.
        """
        self.incoming.mkdir(mode=0o700, exist_ok=True)
        for name in sorted(os.listdir(self.upload)):
            path = self.upload / name
            if not is_temporary(name) and path.is_file():
                os.replace(path, self.incoming / name)
        return [Arrival(name, (self.incoming / name).stat().st_size)
                for name in sorted(os.listdir(self.incoming)) if WIRE_NAME.fullmatch(name)]  # fmt: skip

    def fetch(self, wanted: list[Wanted]) -> list[Path | GatewayError]:
        """Already in the spool, where `collect` put them."""
        for w in wanted:
            if w.local != self.incoming / w.arrival.name:
                os.replace(self.incoming / w.arrival.name, w.local)
        return [w.local for w in wanted]

    def remove(self, arrivals: list[Arrival]) -> list[GatewayError | None]:
        """Forget files the gateway is done with (`collect` moved them out of the mailbox)."""
        for arrival in arrivals:
            (self.incoming / arrival.name).unlink(missing_ok=True)
        return [None] * len(arrivals)
