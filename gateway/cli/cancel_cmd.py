"""`gateway cancel`: an audited operator action on one package."""

from __future__ import annotations

import click

from gateway.admin import actions
from gateway.app.gateway import Gateway
from gateway.cli import reason_option, with_gateway
from gateway.core.names import package_id as parse_package_id


@click.command("cancel")
@click.argument("package_id", metavar="PACKAGE_ID")
@reason_option
@with_gateway
def command(gw: Gateway, package_id: str, reason: str) -> None:
    """Cancel a package not yet delivered, erasing its plaintext and sealed file.

    \b
    Example:
      gateway cancel GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M --reason 'sent to the wrong partner'
    """
    package = actions.cancel(gw, parse_package_id(package_id), reason)
    click.echo(f"{package.package_id} is {package.state}")
