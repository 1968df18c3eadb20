"""`gateway reject`: the second operator's refusal of a package awaiting approval."""

from __future__ import annotations

import click

from gateway.admin import approvals
from gateway.app.gateway import Gateway
from gateway.cli import reason_option, with_gateway
from gateway.core.names import package_id as parse_package_id


@click.command("reject")
@click.argument("package_id", metavar="PACKAGE_ID")
@reason_option
@with_gateway
def command(gw: Gateway, package_id: str, reason: str) -> None:
    """Reject a package awaiting approval: it ends cancelled and its plaintext is erased.

    Refused to the OS user who sent it, or who owned the file dropped in the spool.

    \b
    Example:
      gateway reject GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M --reason 'wrong person: see case 4711'
    """
    package = approvals.reject(gw, parse_package_id(package_id), reason)
    click.echo(f"{package.package_id} is {package.state}: rejected by {gw.ledger.actor}")
