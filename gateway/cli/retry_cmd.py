"""`gateway retry`: an audited operator action on one package."""

from __future__ import annotations

import click

from gateway.admin import actions
from gateway.app.gateway import Gateway
from gateway.cli import reason_option, with_gateway
from gateway.core.names import package_id as parse_package_id


@click.command("retry")
@click.argument("package_id", metavar="PACKAGE_ID")
@reason_option
@with_gateway
def command(gw: Gateway, package_id: str, reason: str) -> None:
    """Release a held or failed package, or retry a waiting one now.

    A held package goes back to where it stopped: sealed if its sealed file is still
    there, else received (sealed again, e.g. with the partner's new key).

    \b
    Example:
      gateway retry GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M --reason 'partner host key re-pinned'
    """
    package = actions.retry(gw, parse_package_id(package_id), reason)
    click.echo(f"{package.package_id} is {package.state}")
