"""`gateway demo`: a complete exchange between two fictional gateways, no setup needed."""

from __future__ import annotations

import logging
import sys

import click

from gateway.admin import demo


@click.command("demo")
@click.option(
    "--keep", is_flag=True, help="Keep both homes afterwards and print commands to explore them."
)
def command(keep: bool) -> None:
    """Run a complete exchange between two gateways on this machine, then clean up.

    A records office sends a conviction notice and an extradition notice to a partner
    agency's drop server; the agency answers with a response; every package is
    acknowledged by a signed receipt. All names and data are fictional.

    \b
    Example:
      gateway demo --keep
    """
    logging.getLogger("gateway").setLevel(logging.WARNING)  # the account below says it all
    if not demo.run(keep, sys.stdout):
        sys.exit(1)
