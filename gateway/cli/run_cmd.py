"""`gateway run`: do the work, once or as a service."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import click

from gateway.adapters.lock import exclusive
from gateway.cli import State, progress


@click.command("run")
@click.option("--once", is_flag=True, help="Do all work that is due, then exit.")
@click.pass_obj
def command(state: State, once: bool) -> None:
    """Take in, seal and deliver packages, as the `daemon` actor.

    Without --once, runs until SIGTERM or SIGINT, then finishes or safely abandons the
    step in hand and exits; SIGHUP makes it read gateway.toml again and apply the
    settings that can change while running (the log names any that need a restart).
    Only one `gateway run` works on a home at a time. With --once on a terminal, each
    large package's delivery shows a progress bar on stderr.

    \b
    Example:
      gateway run --once
      gateway --log-format json run
    """
    with state.gateway("daemon") as gw, exclusive(gw.home.lock):
        try:
            if once:
                gw.keyring.restart_agent()  # as below
                gw.run_once(progress())
                return
            stop, reload = threading.Event(), threading.Event()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                # Only flags: the main loop acts on a reload within a second, on a stop at once.
                (reload if signum == signal.SIGHUP else stop).set()

            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, on_signal)
            daemon = gw.daemon(stop, reload)  # takes systemd's variables out of the environment
            # An agent a command started while no daemon ran lives outside this process's
            # sandbox and cgroup: replace it with our own, which commands beside us then use.
            gw.keyring.restart_agent()
            if not daemon.run():
                # A worker is still in a step: end the process now rather than close the
                # ledger under it. Safe: each step is checkpointed and idempotent, and the
                # next start finishes it; the OS releases the work lock.
                gw.keyring.close()
                gw.keyring.stop_agent()
                os._exit(0)
        finally:
            gw.keyring.stop_agent()  # ours to stop: we hold the work lock
