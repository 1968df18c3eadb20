"""`gateway run`: the long-running service.

The main thread watches and scans the outbound spool, takes files in, and hands the
steps the scheduler says are due to a small pool of worker threads: each received
package is sealed by one worker, each partner's turn runs on one worker over one link,
so a slow or dead partner holds up no one else. All state is in the ledger; the daemon
keeps only what is in flight, so a crash or a restart simply carries on.

Under systemd the main loop tells the service manager it is ready, what it is doing and,
at each turn, that it is still turning (the watchdog): a loop stuck anywhere stops the
pings, and systemd restarts the service. `reload` set (SIGHUP) makes the loop read
gateway.toml again and apply the settings that can change while running.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from gateway.adapters.dropserver import DropServer
from gateway.adapters.home import Home, load_settings
from gateway.adapters.spool import Entry, entries, locate
from gateway.adapters.systemd import Notifier
from gateway.adapters.watch import Hint, SpoolWatcher
from gateway.core.clock import Clock
from gateway.core.errors import GatewayError
from gateway.core.lifecycle import STATUS_COLUMNS
from gateway.core.model import utc
from gateway.core.settings import Settings, reloaded
from gateway.pipeline.audit import AuditTrail
from gateway.pipeline.metrics import Publisher
from gateway.pipeline.retention import Retention
from gateway.pipeline.schedule import Scheduler
from gateway.pipeline.steps import Steps

log = logging.getLogger("gateway")
SHUTDOWN_SECONDS: Final = 8.0
#: Files taken in (about 6 ms each) between two looks at what the workers could do.
HINTS_PER_TURN: Final = 16
#: Put on the hints queue to wake the main loop: a worker finished, a partner uploaded.
WAKE: Final = Hint(Path("/"), renamed=False)
#: How often the ledger's counts in the status line are read again (one query).
STATUS_SECONDS: Final = 15.0
#: The counts the status line shows (columns of `gateway status`).
STATUS_COUNTS: Final = ("queued", "in_flight", "overdue", "held", "failed")


class Daemon:
    """Watch, take in, and keep the workers busy until `stop` is set."""

    def __init__(self, home: Home, settings: Settings, clock: Clock, steps: Steps,
                 scheduler: Scheduler, audit: AuditTrail, retention: Retention, hints: queue.Queue[Hint],
                 close_idle: Callable[[float | None], None], drop_server: DropServer | None,
                 stop: threading.Event, reload: threading.Event, notifier: Notifier,
                 metrics: Publisher | None = None) -> None:  # fmt: skip
        self.home = home
        self.settings = settings
        self.clock = clock
        self.steps = steps
        self.scheduler = scheduler
        self.audit = audit
        self.retention = retention
        self.hints = hints
        self.close_idle = close_idle
        self.drop_server = drop_server
        self.stop = stop
        self.reload = reload
        self.notifier = notifier
        self.metrics = metrics
        self.watcher = SpoolWatcher(home.outbound, hints)
        self.jobs: queue.Queue[tuple[str, Callable[[], object]] | None] = queue.Queue()
        self.busy: set[str] = set()
        self.busy_lock = threading.Lock()
        self.unsettled: dict[Path, float] = {}
        self._counts, self._counted_at = "", float("-inf")
        self.workers = [
            threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
            for n in range(settings.daemon_workers)
        ]

    def run(self) -> bool:
        """Serve until stopped; let the steps in hand finish, or say they were abandoned."""
        self.steps.recover()
        if self.drop_server is not None:
            self.drop_server.start()
        if self.metrics is not None:
            self.metrics.start()
        self.watcher.start()
        for worker in self.workers:
            worker.start()
        threading.Thread(target=self._wake_on_stop, name="wake-on-stop", daemon=True).start()
        next_scan = next_duties = -1.0
        next_checkpoint = self.clock.monotonic() + self.settings.audit_checkpoint_seconds
        # Said once everything listens and watches: a partner that connects on this line
        # finds the drop server up (before, it came ahead of the recovery and the server).
        log.info("daemon started: %s, %d workers", self.home.root, len(self.workers))
        self.notifier.ready(self.status())
        try:
            while not self.stop.is_set():
                # Only here: if this loop is stuck anywhere, the pings stop.
                self.notifier.alive(self.status())
                try:
                    if self.reload.is_set():
                        self.reload.clear()
                        self.reload_settings()
                    if not self.watcher.alive():
                        log.warning(
                            "the spool watcher stopped; restarting it, and scanning to cover the gap"
                        )
                        self.watcher.start()
                        next_scan = next_duties = -1.0
                    if self.clock.monotonic() >= next_scan:
                        self.scan()
                        self._submit("retention", self.retention.run)  # with each full scan
                        next_scan = self.clock.monotonic() + self.settings.daemon_scan_seconds
                    self.recheck_unsettled()
                    self.close_idle(None)
                    if self.clock.monotonic() >= next_checkpoint:
                        self._submit("audit", self._checkpoint)
                        next_checkpoint = (
                            self.clock.monotonic() + self.settings.audit_checkpoint_seconds
                        )
                    if self.clock.monotonic() >= next_duties:  # the log warns before and at expiry
                        self._submit("duties", self.steps.duties.warn)
                        next_duties = self.clock.monotonic() + self.settings.daemon_scan_seconds
                    self.dispatch()
                    if self.metrics is not None:
                        self.metrics.tick()
                    self.wait()
                except Exception as err:  # a full disk, a locked ledger: the service keeps going
                    log.error(
                        "%s; trying again in a second",
                        err if isinstance(err, GatewayError) else repr(err),
                    )
                    self.stop.wait(1.0)
        finally:
            self.notifier.stopping()
            finished = self.shutdown()
        return finished

    def status(self) -> str:
        """One line for `systemctl status`: what is in hand now, and the ledger's counts
        (read every STATUS_SECONDS; a busy ledger leaves the last ones)."""
        if self.clock.monotonic() >= self._counted_at + STATUS_SECONDS:
            self._counted_at = self.clock.monotonic()
            overdue = utc(self.clock.now() - self.settings.receipts_overdue_after_seconds)
            try:
                counts = self.steps.ledger.counts(overdue)
            except (
                Exception
            ) as err:  # a busy or failing ledger: the status line must not stop the loop
                log.debug("no counts for the status line: %r", err)
            else:
                self._counts = "; " + ", ".join(
                    f"{sum(n for (_, s), n in counts.items() if s in STATUS_COLUMNS[column])} "
                    f"{column.replace('_', ' ')}"
                    for column in STATUS_COUNTS
                )
        with self.busy_lock:
            busy = len(self.busy)
        return f"serving: {busy} steps in hand, {len(self.unsettled)} files settling{self._counts}"

    def reload_settings(self) -> None:
        """Read gateway.toml again; apply what can change while running, say what cannot.

        A gateway.toml that does not load leaves every setting as it was.
        """
        self.notifier.reloading()
        try:
            fresh = load_settings(self.home.settings)
        except (GatewayError, OSError) as err:  # a file made unreadable counts as bad too
            log.error("reload: %s; keeping the settings in force", err)
        else:
            merged, applied, kept = reloaded(self.settings, fresh)
            for name in applied:
                log.info("reload: %s is now %s", name, _value(merged, name))
            for name in kept:
                log.warning(
                    "reload: %s changed to %s in gateway.toml, but takes effect only at a "
                    "restart (systemctl restart gateway); keeping %s",
                    name, _value(fresh, name), _value(self.settings, name),
                )  # fmt: skip
            if not applied and not kept:
                log.info("reload: no setting changed")
            self.use(merged)
        try:
            self.steps.duties.reload()
        except (GatewayError, OSError) as err:
            log.error("reload: %s; keeping the regimes in force", err)
        else:
            log.info("reload: the regimes files read again")
        self.notifier.ready(self.status())

    def use(self, settings: Settings) -> None:
        """Put `settings` in force for the loop and every step from now on."""
        self.settings = settings
        self.scheduler.settings = settings
        self.retention.settings = settings
        if self.metrics is not None:
            self.metrics.settings = settings
        self.steps.use(settings)

    def scan(self) -> None:
        """Look at everything in the outbound spool (events may have been missed), and
        for receipts that have become overdue."""
        for entry in entries(self.home.outbound):
            self.hints.put(Hint(entry.path, renamed=False))
        self.steps.intake.finish_stranded()
        self.steps.overdue()

    def ready(self, entry: Entry, renamed: bool) -> Entry | None:
        """The entry to take in now, or None: it may still grow, and is looked at again."""
        settle = self.settings.daemon_settle_seconds
        if (owner := entry.owner()) is not entry:  # a sidecar: its file decides, and takes both
            entry, renamed = owner, False
        if entry.regular and not entry.settled(self.clock.now(), settle, renamed):
            self.unsettled[entry.path] = self.clock.monotonic() + settle
            return None
        self.unsettled.pop(entry.path, None)
        return entry

    def recheck_unsettled(self) -> None:
        """Look again at files that were still changing."""
        now = self.clock.monotonic()
        looks = []
        for path, when in list(self.unsettled.items()):
            if when <= now:
                del self.unsettled[path]
                looks.append(Hint(path, renamed=False))
        self.take(looks)

    def take(self, hints: list[Hint]) -> None:
        """Take in together what the hints point at and is ready (a file and its sidecar
        point at one entry)."""
        ready: dict[Path, Entry] = {}
        for hint in hints:
            found = None if hint is WAKE else locate(self.home.outbound, hint.path)
            if found is not None and (entry := self.ready(found, hint.renamed)) is not None:
                ready[entry.path] = entry
        self.steps.take(ready.values())

    def dispatch(self) -> None:
        """Hand the due steps that nobody is working on to the workers, a few at a time:
        the queue is kept short, so a burst's deliveries are not queued behind its seals."""
        with self.busy_lock:
            busy = set(self.busy)
        for key, job in self.scheduler.due(busy, len(self.workers) - self.jobs.qsize()):
            self._submit(key, job)

    def _checkpoint(self) -> None:
        """Sign a checkpoint of the audit trail; one that cannot be written is logged as an error."""
        try:
            self.audit.checkpoint()
        except (GatewayError, OSError) as err:
            log.error("audit checkpoint NOT written: %s", err)

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
                # The next step may be due now: the main loop looks when the queue runs dry
                # (a worker takes a queued step at once; a look after every step was about
                # a quarter of the loop's CPU in a burst).
                if self.jobs.empty():
                    self.wake()

    def wake(self) -> None:
        """Wake the main loop now, from any thread (not from a signal handler: the loop it
        interrupted may hold the queue's lock)."""
        self.hints.put(WAKE)

    def _wake_on_stop(self) -> None:
        """Wake the main loop once `stop` is set, wherever it was set (a signal handler
        only sets it): the loop stops at once, not at the end of its one-second wait."""
        self.stop.wait()
        self.wake()

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
        self.take(hints)

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
        deadline = self.clock.monotonic() + SHUTDOWN_SECONDS
        for worker in self.workers:
            worker.join(max(0.0, deadline - self.clock.monotonic()))
        self.close_idle(0)
        if self.metrics is not None:
            with contextlib.suppress(GatewayError, OSError):  # the record is the ledger's
                self.metrics.stop()
        if abandoned := [w.name for w in self.workers if w.is_alive()]:
            # Safe: every step is checkpointed in the ledger and idempotent, so the next
            # start finishes what these were doing.
            log.warning(
                "abandoning steps in hand (%s); the next start carries on", ", ".join(abandoned)
            )
        else:
            self._checkpoint()
        log.info("daemon stopped")
        return not abandoned


def _value(settings: Settings, name: str) -> str:
    return repr(getattr(settings, name.replace(".", "_")))
