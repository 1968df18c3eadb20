"""`gateway init`: create a new home."""

from __future__ import annotations

import click

from gateway.admin import keys
from gateway.app.gateway import actor
from gateway.cli import State


@click.command("init")
@click.option(
    "--id",
    "gateway_id",
    required=True,
    metavar="ID",
    help="This gateway's authority id, e.g. GB-ACRO.",
)
@click.pass_obj
def command(state: State, gateway_id: str) -> None:
    """Create the home: settings, ledger, folders, OpenPGP key and SSH keys.

    Refuses to touch a folder that is already a home.

    \b
    Example:
      gateway --home /var/lib/gateway init --id GB-ACRO
    """
    with keys.init(state.home, gateway_id, actor()) as gw:
        key = gw.own_key_info
        click.echo(f"created gateway {gateway_id} in {state.home.root}")
        click.echo(f"OpenPGP key {key.fingerprint}")
        click.echo(
            "next: `gateway keys export --openpgp` and `--ssh` for your partners, "
            "then `gateway partner add`"
        )
