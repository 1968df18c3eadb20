"""`gateway keys`: the gateway's own keys, for operators and partners."""

from __future__ import annotations

import click

from gateway.adapters import sshkeys
from gateway.admin import keys
from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, reason_option, with_gateway
from gateway.core.model import utc


@click.group("keys")
def command() -> None:
    """The gateway's own OpenPGP and SSH keys."""


@command.command("show")
@json_option
@with_gateway
def show(gw: Gateway, as_json: bool) -> None:
    """Show fingerprints and expiry of the gateway's keys.

    Partners check these by phone before pinning them.

    \b
    Example:
      gateway keys show
    """
    key = gw.own_key_info
    info = {
        "gateway": gw.settings.gateway_id,
        "openpgp": {
            "fingerprint": key.fingerprint,
            "expires": utc(key.expires) if key.expires else None,
        },
        "ssh_client": sshkeys.fingerprint(gw.home.ssh_identity_pub.read_text()),
        "ssh_host": sshkeys.fingerprint(gw.home.host_key_pub.read_text()),
        "ssh_host_key": " ".join(gw.home.host_key_pub.read_text().split()[:2]),
    }
    emit(
        info,
        as_json,
        lambda: "\n".join(
            [
                f"gateway          {info['gateway']}",
                f"OpenPGP key      {key.fingerprint}",
                f"  expires        {info['openpgp']['expires'] or 'never'}",  # type: ignore[index]
                f"SSH client key   {info['ssh_client']}",
                f"SSH host key     {info['ssh_host']}",
                f"                 {info['ssh_host_key']}",
            ]
        ),
    )


@command.command("export")
@click.option("--openpgp", "what", flag_value="openpgp", help="The OpenPGP public key (armored).")
@click.option(
    "--ssh", "what", flag_value="ssh", help="The SSH public key the gateway logs in with."
)
@with_gateway
def export(gw: Gateway, what: str | None) -> None:
    """Print a public key to give to partners.

    \b
    Example:
      gateway keys export --openpgp > GB-ACRO.asc
    """
    if what is None:
        raise click.UsageError("say which key: --openpgp or --ssh")
    if what == "openpgp":
        click.echo(gw.keyring.export_public(gw.own_key).rstrip())
    else:
        click.echo(gw.home.ssh_identity_pub.read_text().rstrip())


@command.command("rotate")
@reason_option
@with_gateway
def rotate(gw: Gateway, reason: str) -> None:
    """Make a new OpenPGP key for the gateway; it signs from now on.

    Give partners the new key (`gateway keys export --openpgp`) and its fingerprint;
    packages they still encrypt to the old key keep opening.

    \b
    Example:
      gateway keys rotate --reason 'annual rotation'
    """
    key = keys.rotate(gw, reason)
    click.echo(
        f"new OpenPGP key {key.fingerprint}: send `gateway keys export --openpgp` to every partner"
    )
