"""The composition root: one `Gateway` per command, built from the home, passed down.

No module keeps global state: everything a command touches is built here, from the
home, its settings and one clock, and closed with the gateway (the ledger's
connections, the kept SFTP sessions, the keyring's gpg runs). The pipeline's parts
(transports, steps, scheduler, daemon, drop server) are built the first time they are
asked for: `status` and `ledger list` never import the SFTP client (paramiko and
cryptography took 0.13 s of every start-up, python -X importtime).
"""

from __future__ import annotations

import functools
import os
import pwd
import queue
import threading
from types import TracebackType
from typing import TYPE_CHECKING

from gateway.adapters import sshkeys
from gateway.adapters.clock import SystemClock
from gateway.adapters.gpg import KeyInfo, Keyring
from gateway.adapters.home import Home, load_settings
from gateway.adapters.ledger import Ledger
from gateway.adapters.lock import held
from gateway.adapters.passphrase import Passphrase, read_passphrase
from gateway.core.clock import Clock
from gateway.core.errors import LedgerDamaged, SettingsInvalid
from gateway.core.model import Partner, Progress
from gateway.pipeline.audit import AuditTrail
from gateway.pipeline.duties import Duties

if TYPE_CHECKING:  # built on first use, imported then
    from gateway.adapters.dropserver import DropServer
    from gateway.adapters.metrics import Exporter
    from gateway.adapters.sessions import SessionPool
    from gateway.adapters.watch import Hint
    from gateway.pipeline.daemon import Daemon
    from gateway.pipeline.retention import Retention
    from gateway.pipeline.schedule import Scheduler
    from gateway.pipeline.steps import Steps
    from gateway.transports.base import Transport
    from gateway.transports.pull import Reads


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

    def __init__(self, home: Home, actor: str, clock: Clock | None = None) -> None:
        home.require()
        self.home = home
        self.clock: Clock = clock or SystemClock()
        self.settings = load_settings(home.settings)
        # gpg-agent belongs to the daemon: it starts its own, in the service's sandbox and
        # cgroup, at each start. Beside a running daemon, or for another user than the
        # home's owner, a command uses the daemon's agent and never starts a second one.
        try:
            owner = home.gnupg.stat().st_uid
        except FileNotFoundError:  # a damaged home: gpg will say what is missing
            owner = os.geteuid()
        autostart = os.geteuid() == owner and not held(home.lock)
        self.keyring = Keyring(home.gnupg, self.settings.gnupg_timeout_seconds, self.clock,
                               autostart, self.passphrase)  # fmt: skip
        self.ledger = Ledger(home.ledger, actor, self.clock)
        self.audit = AuditTrail(home, self.ledger, self.keyring, self.settings.gateway_id)
        #: Wakes the daemon's main loop (a worker finished, a partner uploaded).
        self.hints: queue.Queue[Hint] = queue.Queue()

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
        """Close the kept sessions and the ledger; stop any gpg run still going."""
        if "sessions" in self.__dict__:
            self.sessions.close_idle(0)
        self.ledger.close()
        self.keyring.close()

    @property
    def own_key(self) -> str:
        """The fingerprint of the gateway's current OpenPGP key."""
        fingerprint = self.ledger.own_key()
        if fingerprint is None:
            raise LedgerDamaged(
                "the ledger names no key of the gateway's own: restore ledger.db from backup"
            )
        return fingerprint

    @property
    def own_key_info(self) -> KeyInfo:
        """The gateway's current OpenPGP key, as the keyring knows it."""
        return self.keyring.key(self.own_key)

    # -- protected keys ----------------------------------------------------------------------

    @functools.cached_property
    def protected(self) -> bool:
        """Whether the gateway's keys are protected by a passphrase (any of them: the
        OpenPGP secret keys, the SSH identity, the drop server's host key)."""
        return (self.keyring.protected()
                or any(sshkeys.encrypted(p) for p in (self.home.ssh_identity, self.home.host_key)
                       if p.exists()))  # fmt: skip

    def passphrase(self) -> Passphrase | None:
        """The keys' passphrase if they are protected (read once), else None."""
        if not self.protected:
            return None
        if "_passphrase" not in self.__dict__:
            self._passphrase = read_passphrase(self.settings)
        return self._passphrase

    def unlock(self) -> None:
        """Before the daemon starts: check the passphrase is given and opens every key.

        Raises `PassphraseMissing` (saying how to give it) or `PassphraseWrong`, so a
        service with no passphrase stops at once rather than holding every package.
        """
        if not self.protected or "_unlocked" in self.__dict__:
            return
        from gateway.adapters.sftp import load_key

        given = self.passphrase()
        self.keyring.check_passphrase(self.own_key)
        self.sessions.key()
        load_key(self.home.host_key, given)
        self._unlocked = True

    # -- the pipeline, built on first use ---------------------------------------------------

    @functools.cached_property
    def sessions(self) -> SessionPool:
        """The kept SFTP sessions with push partners."""
        from gateway.adapters.sessions import SessionPool

        s = self.settings
        return SessionPool(self.home.ssh_identity, self.home.known_hosts,
                           s.sftp_connect_timeout_seconds, s.sftp_io_timeout_seconds, self.clock,
                           self.passphrase)  # fmt: skip

    @functools.cached_property
    def reads(self) -> Reads:
        """What the drop server saw pull partners read whole, until their turn records it."""
        from gateway.transports.pull import Reads

        return Reads()

    def transport(self, partner: Partner) -> Transport:
        """How the gateway reaches `partner`."""
        if partner.transport == "push":
            from gateway.transports.push import PushTransport

            return PushTransport(partner, self.sessions)
        from gateway.transports.pull import PullTransport

        return PullTransport(partner.id, self.home.mailbox / partner.id,
                             self.home.incoming / partner.id, self.reads)  # fmt: skip

    @functools.cached_property
    def duties(self) -> Duties:
        """Partner policy, routing and deadlines, under the shipped regimes and the home's own."""
        from gateway.adapters import regimes

        return Duties(self.ledger, lambda: regimes.load(self.home.regimes), self.settings)

    @functools.cached_property
    def steps(self) -> Steps:
        """The daemon's units of work."""
        from gateway.pipeline.steps import Steps

        return Steps(self.home, self.ledger, self.keyring, self.settings, self.clock,
                     self.transport, self.duties)  # fmt: skip

    @functools.cached_property
    def retention(self) -> Retention:
        """What the daemon erases when its time is up (the `[retention]` settings)."""
        from gateway.pipeline.retention import Retention

        return Retention(self.home, self.ledger, self.settings, self.clock)

    def scheduler(self, once: bool) -> Scheduler:
        """What is due: for the daemon, or for one pass (`once`)."""
        from gateway.pipeline.schedule import Scheduler

        return Scheduler(self.steps, self.ledger, self.settings, self.clock, self.transport, once)

    def run_once(self, progress: Progress | None = None) -> None:
        """`gateway run --once`: all work that is due, one poll of every partner, the
        warnings of duties and overdue receipts, and the erasures retention says are due;
        with `progress`, each delivery made while its package is sealed is shown as it goes."""
        self.steps.delivery.progress = progress
        self.unlock()
        try:
            self.scheduler(once=True).drain()
            self.steps.overdue()
            self.duties.warn()
            self.retention.run()
        finally:
            self.sessions.close_idle(0)

    def drop_server(self, listen: str) -> DropServer:
        """The drop server for this home's pull partners, listening on `listen` (not started)."""
        from gateway.adapters.dropserver import DropServer, Limits
        from gateway.pipeline.access import hooks
        from gateway.pipeline.daemon import WAKE

        s = self.settings
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsInvalid(f"{listen!r} is not ADDRESS:PORT to listen on, e.g. 0.0.0.0:2222")
        limits = Limits(max_connections=s.serve_max_connections, max_auth_attempts=s.serve_max_auth_attempts,
                        ban_after_failures=s.serve_ban_after_failures, ban_seconds=s.serve_ban_seconds,
                        idle_seconds=s.serve_idle_timeout_seconds, max_upload_bytes=s.serve_max_upload_bytes,
                        auth_seconds=s.serve_auth_timeout_seconds, max_channels=s.serve_max_channels_per_connection,
                        max_handles=s.serve_max_open_handles, max_read_bytes=s.serve_max_read_bytes,
                        max_sessions_per_partner=s.serve_max_sessions_per_partner)  # fmt: skip
        wake: Hint = WAKE
        self.unlock()
        return DropServer((host.strip("[]"), int(port)), self.home.host_key,
                          hooks(self.home, self.ledger, self.reads, lambda: self.hints.put(wake)),
                          limits, self.clock, self.passphrase())  # fmt: skip

    def daemon(self, stop: threading.Event, reload: threading.Event | None = None) -> Daemon:
        """`gateway run`: the service, with the drop server when `serve.listen` is set; it
        reads gateway.toml again when `reload` is set, and speaks to systemd when run by it."""
        from gateway.adapters.systemd import Notifier
        from gateway.pipeline.daemon import Daemon
        from gateway.pipeline.metrics import Publisher

        self.unlock()
        self.duties.load_calendars()
        listen = self.settings.serve_listen
        drop_server = self.drop_server(listen) if listen else None
        publisher = Publisher(self.metrics(drop_server), self.settings, self.clock)
        return Daemon(self.home, self.settings, self.clock, self.steps, self.scheduler(once=False),
                      self.audit, self.retention, self.hints, self.sessions.close_idle,
                      drop_server, stop, reload or threading.Event(),
                      Notifier.from_environment(self.clock), publisher)  # fmt: skip

    def metrics(self, drop_server: DropServer | None = None) -> Exporter:
        """The metrics of this home (with the sessions of `drop_server`, the daemon's)."""
        from gateway.adapters.metrics import Exporter
        from gateway.pipeline.metrics import Gather

        return Exporter(Gather(self.home, self.ledger, self.keyring, self.settings, self.clock,
                               drop_server))  # fmt: skip
