"""`gateway send`: queue one file for a partner."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.app.gateway import Gateway
from gateway.cli import progress, with_gateway
from gateway.core.names import KINDS
from gateway.pipeline.intake import Intake, Labels


@click.command("send")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "partner", required=True, metavar="ID", help="The partner's authority id.")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="What the package is.")
@click.option("--ref", "reference", help="Upstream case reference (goes in the signed manifest).")
@click.option("--legal-basis", help="Legal basis of the transfer, e.g. CoE-1959-Art22.")
@click.option("--marking", help="Protective marking, e.g. OFFICIAL-SENSITIVE.")
@click.option(
    "--in-reply-to", metavar="PACKAGE_ID", help="The package this answers (e.g. a request)."
)
@with_gateway
def command(
    gw: Gateway,
    file: Path,
    partner: str,
    kind: str,
    reference: str | None,
    legal_basis: str | None,
    marking: str | None,
    in_reply_to: str | None,
) -> None:
    """Queue FILE for a partner and print its package id.

    The file is copied in (a symbolic link is refused, never followed); the original is
    left where it is. The daemon, or `gateway run --once`, seals and delivers it. On a
    terminal, a large file's copy shows a progress bar on stderr.

    \b
    Example:
      gateway send notice.xml --to US-NCB --kind conviction --ref CASE-123
    """
    package = Intake(gw.home, gw.ledger, gw.settings).copy_in(
        file, partner, kind, Labels(reference, legal_basis, marking, in_reply_to), progress()
    )
    click.echo(package.package_id)
