"""Kept SFTP sessions: one per push partner, reused by its next turn while still good.

While a burst is sealed, a partner's turns come a few tenths of a second apart, and a
new session costs 0.13 s or more (key exchange, login): 60 of them per 1000 small
packages. So a session is kept `KEEP_SECONDS` after a turn, for the partner's next one,
if it is still connected, for the same endpoint, and its server's key is still the one
pinned (`partner set-host-key` takes effect at once).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from gateway.adapters.passphrase import Passphrase
from gateway.adapters.sftp import Endpoint, Identity, SftpPartner, load_key
from gateway.core.clock import Clock

KEEP_SECONDS: Final = 5.0


class SessionPool:
    """Opens, lends and keeps SFTP sessions with push partners; safe across threads."""

    def __init__(self, identity: Path, known_hosts: Path, connect_timeout: float,
                 io_timeout: float, clock: Clock,
                 passphrase: Callable[[], Passphrase | None] = lambda: None) -> None:  # fmt: skip
        """`passphrase` is asked for once, when the identity is first loaded."""
        self.identity = identity
        self._passphrase = passphrase
        self._key: Identity | None = None
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.clock = clock
        self.keep_seconds = KEEP_SECONDS
        self._kept: dict[Endpoint, tuple[SftpPartner, float]] = {}  # endpoint: (session, since)
        self._lock = threading.Lock()

    def key(self) -> Identity:
        """The gateway's SSH identity, loaded (and decrypted) the first time it is needed."""
        with self._lock:
            if self._key is None:
                self._key = load_key(self.identity, self._passphrase())
            return self._key

    def session(self, endpoint: Endpoint) -> SftpPartner:
        """A new session with `endpoint`, not yet open."""
        return SftpPartner(endpoint, self.key(), self.known_hosts, self.connect_timeout,
                           self.io_timeout)  # fmt: skip

    @contextlib.contextmanager
    def connected(self, endpoint: Endpoint) -> Iterator[SftpPartner]:
        """An open session with `endpoint`: the one kept from its last turn if still good, else new.

        It is kept for the next turn unless this one ended in an error or closed it.
        """
        with self._lock:
            sftp, since = self._kept.pop(endpoint, (None, 0.0))
        if sftp is not None and not (
            self.clock.monotonic() - since < self.keep_seconds and sftp.reusable(endpoint)
        ):
            sftp.close()
            sftp = None
        if sftp is None:
            sftp = self.session(endpoint).open()
        try:
            yield sftp
        except BaseException:
            sftp.close()
            raise
        if sftp.closed:  # the turn found it broken
            return
        with self._lock:
            replaced = self._kept.get(endpoint)
            self._kept[endpoint] = (sftp, self.clock.monotonic())
        if replaced is not None:  # another session came back first (an upload beside a turn)
            replaced[0].close()

    def close_idle(self, after: float | None = None) -> None:
        """Close the sessions kept `after` seconds or more (default: the keep time; 0: all)."""
        after = self.keep_seconds if after is None else after
        now = self.clock.monotonic()
        with self._lock:
            idle = [e for e, (_, since) in self._kept.items() if now - since >= after]
            sessions = [self._kept.pop(e)[0] for e in idle]
        for sftp in sessions:
            sftp.close()
