"""`gateway approve`: the second operator's approval of a package awaiting it."""

from __future__ import annotations

import click

from gateway.admin import approvals
from gateway.app.gateway import Gateway
from gateway.cli import reason_option, with_gateway
from gateway.core.names import package_id as parse_package_id


@click.command("approve")
@click.argument("package_id", metavar="PACKAGE_ID")
@reason_option
@with_gateway
def command(gw: Gateway, package_id: str, reason: str) -> None:
    """Approve a package awaiting approval; the daemon then seals and delivers it.

    Refused to the OS user who sent it, or who owned the file dropped in the spool.

    \b
    Example:
      gateway approve GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M --reason 'checked against case file 4711'
    """
    package = approvals.approve(gw, parse_package_id(package_id), reason)
    click.echo(f"{package.package_id} is {package.state}: approved by {gw.ledger.actor}")
