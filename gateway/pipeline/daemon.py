"""`gateway run`: the long-running service.

The main thread watches and scans the outbound spool, takes files in, and hands due work
to a small pool of worker threads: each received package is sealed by one worker, each
push partner's due packages are delivered by one worker over one SFTP session, so a slow
or dead partner holds up no one else. All state is in the ledger; the daemon keeps only
what is in flight, so a crash or a restart simply carries on.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.adapters.dropserver import DropServer, Limits
from gateway.adapters.spool import Entry, entries, locate
from gateway.adapters.watch import Hint, SpoolWatcher
from gateway.admin import audit
from gateway.app.gateway import Gateway
from gateway.core.errors import GatewayError, HomeError
from gateway.core.lifecycle import State
from gateway.pipeline.steps import Runner
from gateway.transports.pull import Mailboxes

log = logging.getLogger("gateway")
SHUTDOWN_SECONDS = 8.0
#: Files taken in (about 6 ms each) between two looks at what the workers could do.
HINTS_PER_TURN = 16
#: Sealed packages handed to one partner's turn; the next turn takes the rest.
ROUND_PACKAGES = 256
_WAKE = Hint(Path("/"), renamed=False)
_RECEIVED = frozenset({State.RECEIVED})
_SEALED = frozenset({State.SEALED})


def drop_server(gw: Gateway, mailboxes: Mailboxes, listen: str) -> DropServer:
    """The drop server for this home, listening on `listen` (not yet started)."""
    s = gw.settings
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise HomeError(f"{listen!r} is not ADDRESS:PORT to listen on, e.g. 0.0.0.0:2222")
    limits = Limits(max_connections=s.serve_max_connections, max_auth_attempts=s.serve_max_auth_attempts,
                    ban_after_failures=s.serve_ban_after_failures, ban_seconds=s.serve_ban_seconds,
                    idle_seconds=s.serve_idle_timeout_seconds, max_upload_bytes=s.serve_max_upload_bytes)  # fmt: skip
    return DropServer((host.strip("[]"), int(port)), gw.home.host_key, mailboxes.hooks(), limits)


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Hold the home's work lock: one `gateway run` per home at a time."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise HomeError(
                f"another `gateway run` (pid {holder}) is already working on this home: "
                "stop it first, or leave the work to it; other commands can be used beside it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Daemon:
    """Watch, take in, and keep the workers busy until `stop` is set."""

    def __init__(self, gw: Gateway, stop: threading.Event) -> None:
        self.gw = gw
        self.stop = stop
        self.runner = Runner(gw)
        self.hints: queue.Queue[Hint] = queue.Queue()
        self.watcher = SpoolWatcher(gw.home.outbound, self.hints)
        self.jobs: queue.Queue[tuple[str, Callable[[], object]] | None] = queue.Queue()
        self.busy: set[str] = set()
        self.busy_lock = threading.Lock()
        self.unsettled: dict[Path, float] = {}
        self.next_poll: dict[str, float] = {}
        self.runner.mailboxes.wake = lambda: self.hints.put(_WAKE)
        self.drop_server = (
            drop_server(gw, self.runner.mailboxes, gw.settings.serve_listen)
            if gw.settings.serve_listen
            else None
        )
        self.workers = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(gw.settings.daemon_workers)
        ]

    def run(self) -> bool:
        """Serve until stopped; let the steps in hand finish, or say they were abandoned."""
        settings = self.gw.settings
        log.info("daemon started: %s, %d workers", self.gw.home.root, len(self.workers))
        self.runner.recover()
        if self.drop_server is not None:
            self.drop_server.start()
        self.watcher.start()
        for worker in self.workers:
            worker.start()
        next_scan = 0.0
        next_checkpoint = time.monotonic() + settings.audit_checkpoint_seconds
        try:
            while not self.stop.is_set():
                try:
                    if not self.watcher.alive():
                        log.warning(
                            "the spool watcher stopped; restarting it, and scanning to cover the gap"
                        )
                        self.watcher.start()
                        next_scan = 0.0
                    if time.monotonic() >= next_scan:
                        self.scan()
                        next_scan = time.monotonic() + settings.daemon_scan_seconds
                    self.recheck_unsettled()
                    self.runner.deliverer.close_idle()
                    if time.monotonic() >= next_checkpoint:
                        self._submit("audit", functools.partial(audit.checkpoint, self.gw))
                        next_checkpoint = time.monotonic() + settings.audit_checkpoint_seconds
                    self.dispatch()
                    self.wait()
                except Exception as err:  # a full disk, a locked ledger: the service keeps going
                    log.error(
                        "%s; trying again in a second",
                        err if isinstance(err, GatewayError) else repr(err),
                    )
                    self.stop.wait(1.0)
        finally:
            finished = self.shutdown()
        return finished

    def scan(self) -> None:
        """Look at everything in the outbound spool (events may have been missed)."""
        for entry in entries(self.gw.home.outbound):
            self.hints.put(Hint(entry.path, renamed=False))

    def consider(self, entry: Entry, renamed: bool) -> None:
        """Take an entry in now, or note when to look at it again if it may still grow."""
        settle = self.gw.settings.daemon_settle_seconds
        if entry.regular and not renamed and not entry.settled(time.time(), settle):
            self.unsettled[entry.path] = time.monotonic() + settle
            return
        self.unsettled.pop(entry.path, None)
        self.runner.take(entry)

    def recheck_unsettled(self) -> None:
        """Look again at files that were still changing."""
        now = time.monotonic()
        for path, when in list(self.unsettled.items()):
            if when <= now:
                del self.unsettled[path]
                entry = locate(self.gw.home.outbound, path)
                if entry is not None:
                    self.consider(entry, renamed=False)

    def dispatch(self) -> None:
        """Hand due steps that nobody is working on to the workers, a few at a time.

        Partners' turns go first and the queue is kept short, so uploads overlap sealing
        instead of waiting behind a thousand seals; and each wake-up reads a few rows, not
        every pending package (which made a burst of 1000 cost 23 s of this thread).
        """
        now = time.time()
        settings = self.gw.settings
        for partner in self.gw.ledger.partners():
            # A pull partner's mailbox is a local folder: looked at on every turn.
            poll = partner.transport == "pull" or time.monotonic() >= self.next_poll.get(
                partner.id, 0.0
            )
            key = f"partner:{partner.id}"
            if key in self.busy:
                continue
            packages = self.gw.ledger.due(_SEALED, now, partner.id, limit=ROUND_PACKAGES)
            if not (packages or poll):
                continue
            job = functools.partial(self.runner.partner_round, partner, packages, poll)
            if self._submit(key, job) and poll:
                self.next_poll[partner.id] = time.monotonic() + settings.daemon_poll_seconds
        room = len(self.workers) - self.jobs.qsize()
        if room > 0:
            for package in self.gw.ledger.due(_RECEIVED, now, limit=len(self.busy) + room):
                if self._submit(package.package_id, functools.partial(self.runner.seal, package)):
                    room -= 1
                    if room == 0:
                        break

    def _submit(self, key: str, job: Callable[[], object]) -> bool:
        """Queue `job` unless a worker already has work under `key`; say whether queued."""
        with self.busy_lock:
            if key in self.busy:
                return False
            self.busy.add(key)
        self.jobs.put((key, job))
        return True

    def _work(self) -> None:
        while (item := self.jobs.get()) is not None:
            key, job = item
            try:
                job()
            except Exception:
                log.exception("%s: unexpected error; the step will be tried again", key)
            finally:
                with self.busy_lock:
                    self.busy.discard(key)
                self.hints.put(_WAKE)  # the next step may be due now

    def wait(self) -> None:
        """Sleep until a hint or a worker wakes us, or a second passes; take in what was hinted.

        At most HINTS_PER_TURN hints are handled before returning, so the workers are fed
        while a burst of files is still being taken in.
        """
        hints: list[Hint] = []
        with contextlib.suppress(queue.Empty):
            hints.append(self.hints.get(timeout=1.0))
            while len(hints) < HINTS_PER_TURN:
                hints.append(self.hints.get_nowait())
        for hint in hints:
            if hint is not _WAKE:
                entry = locate(self.gw.home.outbound, hint.path)
                if entry is not None:
                    self.consider(entry, hint.renamed)

    def shutdown(self) -> bool:
        """Stop watching, let workers finish their step for a few seconds; say if all did."""
        self.watcher.stop()
        if self.drop_server is not None:
            self.drop_server.stop()
        with contextlib.suppress(queue.Empty):  # steps not yet started stay due in the ledger
            while True:
                self.jobs.get_nowait()
        for _ in self.workers:
            self.jobs.put(None)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.runner.deliverer.close_idle(0)
        if abandoned := [w.name for w in self.workers if w.is_alive()]:
            # Safe: every step is checkpointed in the ledger and idempotent, so the next
            # start finishes what these were doing.
            log.warning(
                "abandoning steps in hand (%s); the next start carries on", ", ".join(abandoned)
            )
        else:
            try:
                audit.checkpoint(self.gw)
            except (GatewayError, OSError) as err:
                log.warning("no audit checkpoint at shutdown: %s", err)
        log.info("daemon stopped")
        return not abandoned
