"""`gateway send`: queue one file for a partner."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.app.gateway import Gateway
from gateway.cli import progress, with_gateway
from gateway.core.duties import Declared
from gateway.core.names import KINDS
from gateway.pipeline.intake import Intake


@click.command("send")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "partner", required=True, metavar="ID", help="The partner's authority id.")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="What the package is.")
@click.option("--ref", "reference", help="Upstream case reference (goes in the signed manifest).")
@click.option(
    "--legal-basis",
    metavar="REGIME",
    help="The regime it travels under (`gateway regimes`); default: the partner's first for the kind.",
)
@click.option("--marking", help="Protective marking, e.g. OFFICIAL-SENSITIVE.")
@click.option(
    "--in-reply-to", metavar="PACKAGE_ID", help="The package this answers (e.g. a request)."
)
@click.option("--supersedes", metavar="PACKAGE_ID", help="The package this one amends.")
@click.option(
    "--recorded-on",
    metavar="YYYY-MM-DD",
    help="When the conviction was recorded: the notification period runs from it (default: today, UTC).",
)
@click.option(
    "--nationality",
    "nationalities",
    metavar="CC",
    multiple=True,
    help="A nationality of the person concerned (repeatable): the partner must serve one of them.",
)
@with_gateway
def command(gw: Gateway, file: Path, partner: str, kind: str, reference: str | None,
            legal_basis: str | None, marking: str | None, in_reply_to: str | None,
            supersedes: str | None, recorded_on: str | None,
            nationalities: tuple[str, ...]) -> None:  # fmt: skip
    """Queue FILE for a partner and print its package id.

    The file is copied in (a symbolic link is refused, never followed); the original is
    left where it is. It is refused unless the partner is registered to receive KIND under
    a regime, and, if --nationality is given, unless the partner serves one of them. The
    daemon, or `gateway run --once`, seals and delivers it. On a terminal, a large file's
    copy shows a progress bar on stderr.

    \b
    Example:
      gateway send notice.xml --to FR-CJN --kind conviction --ref CASE-123 \\
        --nationality FR --recorded-on 2027-05-28
    """
    declared = Declared(reference, legal_basis, marking, in_reply_to, supersedes, recorded_on,
                        nationalities)  # fmt: skip
    package = Intake(gw.home, gw.ledger, gw.settings, gw.duties).copy_in(
        file, partner, kind, declared, progress()
    )
    click.echo(package.package_id)
