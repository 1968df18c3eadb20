"""The Transport contract: how sealed packages and receipts reach one partner, and how
what the partner sends reaches the gateway.

The pipeline decides what moves and records every step in the ledger; a transport only
moves bytes. It knows nothing of states, retries, keys or the ledger, and the pipeline
never asks which transport it holds. Two implement the contract:

- `PushTransport` (push.py): the partner's own SFTP server, which the gateway logs in
  to with its SSH key, accepting only the pinned host key;
- `PullTransport` (pull.py): the partner's mailbox on the gateway's own drop server,
  which the partner logs in to.

A turn with a partner opens one link (`with transport.link() as link:`) and does all of
its work over it. A link must honour:

`deliver(files) -> [Placed | GatewayError]`
    Make each sealed file (`Outgoing`: `local`, `name`, `sha256`) available to the
    partner as its `name`; each one's outcome, in order. Idempotent under `name`: cut
    off at any instant and asked again, it never leaves half a file or a second copy
    under that name. If `name` is already there with the same bytes (SHA-256 `sha256`)
    the outcome says `already_there`; with other bytes it is `RemoteConflict`, and
    nothing is overwritten. An error that keeps one file back is that file's outcome;
    once the link breaks, its error is the outcome of every file not yet in place.

`open_part(name) -> Part | None`, then `place(name, size, sha256) -> Placed`
    The same in two halves, for a package uploaded while it is sealed: the pipeline
    hands the part to the sealer as its tee, records `sealed`, then places the part.
    Nothing shows under `name` before `place`. A link for which the overlap gains
    nothing (a local folder) answers None, and the package is sealed first.

`collect() -> list[Arrival]`
    The files the partner left for the gateway whose names are of the contract
    (`<package_id>.pgp`, `<package_id>.receipt`), in a stable order. Anything else is
    left where it is on a partner's own server; from the gateway's own mailbox, the
    finished files with other names are moved into `spool/incoming/<PARTNER>/` too, where
    the pipeline quarantines them.

`fetch(wanted) -> [Path | GatewayError]`
    Bring each (`Wanted`: `arrival`, `local`, `max_bytes`) into the gateway's own spool
    as `local`, whole or not at all; a file that grows past `max_bytes` is not brought.
    Each one's outcome, in order: where it now lies, or the error that kept it out.

`remove(arrivals) -> [None | GatewayError]`
    Forget collected files on the partner's side; each one's outcome. The pipeline calls
    it only once a file's outcome is committed in the ledger: a crash before then
    fetches the file again, and the ledger's memory of package ids makes that harmless.

`answer(files) -> [Placed | GatewayError]`
    Make the gateway's receipts available to the partner, as `deliver` does.

`transport.placed` is the state a package is in once delivered this way: `delivered`
when it lies on the partner's own server, `published` when it waits in the gateway's
drop server until the partner has read it whole (`transport.read_whole()` names those
read since it was last asked). `transport.remote` says whether opening a link reaches
the partner: if so, each link's outcome is recorded as the partner's health. `transport.poll_seconds(settings)` says how often a turn
should look for what the partner sent.

Failures are the error tree's: `Transient` ones (`TransferFailed`, `Timeout`) mean the
link broke or the partner is away; the pipeline sets back what is left and tries again
later. `Permanent` ones (`HostKeyMismatch`, `RemoteConflict`) hold the package for an
operator.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Protocol

from gateway.core.errors import GatewayError
from gateway.core.lifecycle import State
from gateway.core.model import Arrival, Outgoing, Placed, Wanted
from gateway.core.settings import Settings


class Part(Protocol):
    """A file being written on the partner's side under a hidden name, `block` bytes a write.

    `whole` once `close` succeeded; leaving it otherwise abandons the file.
    """

    block: int
    whole: bool

    def write(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Part: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Link(Protocol):
    """One turn's connection with a partner (see the module's text for the contract)."""

    where: str  # the partner's side, for the audit trail

    def deliver(self, files: list[Outgoing]) -> list[Placed | GatewayError]: ...

    def open_part(self, name: str) -> Part | None: ...

    def place(self, name: str, size: int, sha256: str) -> Placed: ...

    def collect(self) -> list[Arrival]: ...

    def fetch(self, wanted: list[Wanted]) -> list[Path | GatewayError]: ...

    def remove(self, arrivals: list[Arrival]) -> list[GatewayError | None]: ...

    def answer(self, files: list[Outgoing]) -> list[Placed | GatewayError]: ...


class Transport(Protocol):
    """How the gateway reaches one partner."""

    placed: State
    remote: bool

    def link(self) -> AbstractContextManager[Link]: ...

    def read_whole(self) -> list[str]: ...

    def poll_seconds(self, settings: Settings) -> float: ...
