"""`gateway serve`: the drop server for pull partners, on its own."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click

from gateway.cli import State
from gateway.core.errors import UsageError


@click.command("serve")
@click.option("--listen", metavar="ADDRESS:PORT", help="Where to listen (default: serve.listen).")
@click.pass_obj
def command(state: State, listen: str | None) -> None:
    """Run the SFTP drop server until SIGTERM or SIGINT.

    Pull partners log in with their authority id and registered SSH key, and see only
    /download and /upload. `gateway run` publishes to and takes in from the mailboxes;
    it also starts this server itself when serve.listen is set.

    \b
    Example:
      gateway serve --listen 0.0.0.0:2222
    """
    with state.gateway("daemon") as gw:
        listen = listen or gw.settings.serve_listen
        if not listen:
            raise UsageError("say where to listen: --listen ADDRESS:PORT, or set serve.listen")
        stop = threading.Event()
        server = gw.drop_server(listen)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)
        server.start()
        try:
            while not stop.wait(0.5):
                gw.steps.record_reads()
        finally:
            server.stop()
            gw.steps.record_reads()
