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
@click.option(
    "--protect",
    is_flag=True,
    help="Protect the secret keys with the passphrase of the systemd credential "
    "gateway-passphrase, else of --passphrase-file.",
)
@click.option(
    "--passphrase-file",
    metavar="FILE",
    default="",
    help="With --protect: a file (mode 0400, yours) holding the passphrase; recorded as "
    "passphrase.file.",
)
@click.pass_obj
def command(state: State, gateway_id: str, protect: bool, passphrase_file: str) -> None:
    """Create the home: settings, ledger, folders, OpenPGP key and SSH keys.

    Refuses to touch a folder that is already a home. With --protect, the keys are
    made with a passphrase, which the daemon then reads the same way.

    \b
    Example:
      gateway --home /var/lib/gateway init --id GB-ACRO
      gateway --home /var/lib/gateway init --id GB-ACRO --protect --passphrase-file /etc/gateway/passphrase
    """
    if passphrase_file and not protect:
        raise click.UsageError("--passphrase-file goes with --protect")
    with keys.init(state.home, gateway_id, actor(), protect=protect,
                   passphrase_file=passphrase_file) as gw:  # fmt: skip
        key = gw.own_key_info
        click.echo(f"created gateway {gateway_id} in {state.home.root}")
        if protect:
            click.echo("its secret keys are protected by the passphrase given")
        click.echo(f"OpenPGP key {key.fingerprint}")
        click.echo(
            "next: `gateway keys export --openpgp` and `--ssh` for your partners, "
            "then `gateway partner add`"
        )
