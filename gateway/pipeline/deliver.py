"""Delivery: `sealed` -> `delivered` (or `published`), over one link of any transport.

Checkpoint, then act: the attempt is recorded before the bytes go; the partner's name
for the file is fixed by the package id, and a link treats a name already holding the
same bytes as delivered, so a delivery cut off at any instant is finished, never
repeated under a second name.

A large package is delivered while it is sealed: gpg and an upload take about as long
as each other, so one after the other they took twice as long as the bare tools
(docs/performance.md, scenario 1). The step runner asks `beside` for a part on the
partner's side and hands it to the sealer as its tee; sealing knows nothing of
delivery, nor delivery of sealing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Final

from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.core.errors import GatewayError, Transient
from gateway.core.lifecycle import State
from gateway.core.model import Outgoing, Package, Placed, Progress, utc
from gateway.core.names import wire_name
from gateway.pipeline.setback import Setback
from gateway.transports.base import Link, Part, Transport

log = logging.getLogger("gateway")
#: Deliveries recorded per ledger commit. Each commit is an fsync (about 9 ms under load),
#: which was a third of the cost of a small package; a crash costs at most this many
#: re-checks.
GROUP: Final = 32
#: Payloads from this size up are delivered while they are sealed. Below it the overlap
#: saves little (32 MiB go up in about 0.25 s here), and a partner turn's batch costs
#: less per package (one ledger commit per GROUP uploads).
STREAM_FROM: Final = 32 * 1024 * 1024


class Delivery:
    """Delivers sealed packages over a transport's link, and records each."""

    def __init__(self, home: Home, ledger: Ledger, setback: Setback) -> None:
        self.home = home
        self.ledger = ledger
        self.setback = setback
        self.stream_from = STREAM_FROM
        #: Shows each delivery beside gpg as it goes (`run --once` on a terminal).
        self.progress: Progress | None = None
        self._streaming: set[str] = set()  # package ids being delivered beside gpg
        self._lock = threading.Lock()

    def deliver(self, transport: Transport, link: Link, packages: list[Package]) -> None:
        """Deliver `packages` (all sealed, all for one partner) over `link`.

        A conflict holds one package; a transient failure sets back that package and,
        once its group is recorded, the groups after it (the link is likely gone).
        """
        with self._lock:  # a package being delivered beside gpg is that delivery's to finish
            packages = [p for p in packages if p.package_id not in self._streaming]
        done = 0
        try:
            for done in range(0, len(packages), GROUP):
                if trouble := self._group(transport, link, packages[done : done + GROUP]):
                    self.setback.all(packages[done + GROUP :], trouble)
                    return
        except GatewayError as err:
            self.setback.all(packages[done:], err)

    def _group(self, transport: Transport, link: Link, group: list[Package]) -> Transient | None:
        """Deliver `group`, recording the attempts before and the outcomes after, one commit
        each; the first transient failure, if any.

        A crash before the second commit leaves delivered packages `sealed`: the next turn
        finds each already there with the same SHA-256 and records it then.
        """
        with self.ledger.transaction():
            for package in group:
                self.ledger.note(package.package_id, "deliver.attempt", {"endpoint": link.where})
        outcomes = link.deliver([Outgoing(self.home.sealed_file(p.package_id),
                                          wire_name(p.package_id), str(p.ciphertext_sha256))
                                 for p in group])  # fmt: skip
        trouble = None
        with self.ledger.transaction():
            for package, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Placed):
                    self._record(transport.placed, package, outcome, link.where)
                    continue
                self.setback.one(package, outcome)
                if trouble is None and isinstance(outcome, Transient):
                    trouble = outcome
        return trouble

    @contextlib.contextmanager
    def beside(self, transport: Transport, package: Package) -> Iterator[Beside | None]:
        """A part on the partner's side to deliver `package` into while it is sealed; None
        when the transport lends none or cannot be reached (then it is sealed first and the
        partner's next turn delivers it).

        Nothing shows on the partner's side before the ledger holds the ciphertext's
        SHA-256: the bytes go to the link's hidden part, placed (`Beside.place`) only after
        `sealed` is recorded. Until then, this process's delivery turns leave the package
        alone (one `gateway run` per home); after a crash the partner's turn delivers it
        again over the part. A link that breaks changes nothing but the timing.
        """
        name = wire_name(package.package_id)
        with self._lock:
            self._streaming.add(package.package_id)
        try:
            with contextlib.ExitStack() as stack:
                try:
                    link = stack.enter_context(transport.link())
                    part = link.open_part(name)
                except GatewayError as err:
                    log.info("%s: sealed first, delivered after (%s)", package.package_id, err)
                    part = None
                if part is None:
                    yield None
                    return
                stack.enter_context(part)
                self.ledger.note(package.package_id, "deliver.attempt", {"endpoint": link.where})
                if self.progress:  # the ciphertext is about the payload's size
                    label = f"{package.package_id} to {package.partner}"
                    counted = _Counted(part, self.progress(label, package.payload_size or 0))
                    stack.callback(counted.shown.close)
                    yield Beside(self, transport, link, counted)
                    return
                yield Beside(self, transport, link, part)
        except _LinkLost:  # sealed; the partner's next turn delivers it
            pass
        finally:
            with self._lock:
                self._streaming.discard(package.package_id)

    def _record(self, state: State, package: Package, put: Placed, where: str) -> None:
        detail = {"endpoint": where, "path": put.path, "already_there": put.already_there,
                  "recipient": package.partner, "legal_basis": package.legal_basis,
                  "recipient_key": package.recipient_key, "ciphertext_sha256": package.ciphertext_sha256}  # fmt: skip
        if state is State.DELIVERED:
            self.ledger.transition(package.package_id, state, "deliver", detail, next_attempt_at=None,
                                   last_error=None, delivered_at=utc(self.ledger.clock.now()))  # fmt: skip
        else:
            self.ledger.transition(package.package_id, state, "publish", detail,
                                   next_attempt_at=None, last_error=None)  # fmt: skip


class _Counted:
    """A part that shows the bytes written through it; the bar ends when the part is
    closed, before the ledger's log lines of the package being sealed and delivered."""

    def __init__(self, part: Part, shown: AbstractContextManager[Callable[[int], None]]) -> None:
        self.part = part
        self.shown = contextlib.ExitStack()
        self.advance = self.shown.enter_context(shown)
        self.block = part.block

    @property
    def whole(self) -> bool:
        return self.part.whole

    @whole.setter
    def whole(self, value: bool) -> None:
        self.part.whole = value

    def write(self, chunk: bytes) -> None:
        self.part.write(chunk)
        self.advance(len(chunk))

    def close(self) -> None:
        try:
            self.part.close()
        finally:
            self.shown.close()

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc: object) -> None:
        pass  # the part itself is closed by `beside`


class _LinkLost(Exception):
    """The link failed after the package was sealed: it is not kept; the package waits sealed."""


class Beside:
    """A package's part on the partner's side, written while the package is sealed."""

    def __init__(self, delivery: Delivery, transport: Transport, link: Link, part: Part) -> None:
        self.delivery = delivery
        self.transport = transport
        self.link = link
        self.part = part

    def place(self, sealed: Package) -> None:
        """Place the part, now `sealed` is recorded, and record the delivery; if the part did
        not go up whole or cannot be placed, the link is given up and the package waits."""
        if not self.part.whole:
            raise _LinkLost
        try:
            put = self.link.place(wire_name(sealed.package_id), int(sealed.ciphertext_size or 0),
                                  str(sealed.ciphertext_sha256))  # fmt: skip
        except GatewayError as err:
            self.delivery.setback.one(sealed, err)
            raise _LinkLost from None
        self.delivery._record(self.transport.placed, sealed, put, self.link.where)
