"""`gateway run`: do the work."""

from __future__ import annotations

import click

from gateway.cli import State
from gateway.runner import Runner


@click.command("run")
@click.option("--once", is_flag=True, required=True, help="Do all work that is due, then exit.")
@click.pass_obj
def command(state: State, once: bool) -> None:
    """Take in, seal and deliver everything that is due, as the `daemon` actor.

    \b
    Example:
      gateway run --once
    """
    with state.gateway("daemon") as gw:
        Runner(gw).once()
