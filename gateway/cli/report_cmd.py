"""`gateway report`: exchange statistics over a period."""

from __future__ import annotations

import json

import click

from gateway.admin import report
from gateway.app.gateway import Gateway
from gateway.cli import with_gateway


@click.command("report")
@click.option(
    "--from", "start", required=True, metavar="DAY", help="First day, e.g. 2026-10-01 (UTC)."
)
@click.option("--to", "end", required=True, metavar="DAY", help="Last day, included (UTC).")
@click.option(
    "--by",
    metavar="partner,kind,month,regime",
    help="Group rows by any of partner, kind, month and regime, comma-separated; a row of "
    "totals follows.",
)
@click.option("--json", "form", flag_value="json", help="Print JSON instead of text.")
@click.option("--csv", "form", flag_value="csv", help="Print CSV, one header line.")
@with_gateway
def command(gw: Gateway, start: str, end: str, by: str | None, form: str | None) -> None:
    """Count packages taken in over a period: sent, acknowledged, refused, failed,
    cancelled; received, accepted, rejected; notifications made and requests answered
    within their period, duties late now; median and 95th percentile time from delivery
    to the partner's receipt, in seconds.

    Each package counts in the period it was taken in (sent, or fetched from the
    partner), by its state now.

    \b
    Examples:
      gateway report --from 2026-10-01 --to 2026-12-31 --by partner,month
      gateway report --from 2026-10-01 --to 2026-12-31 --by kind --csv > q4.csv
    """
    doc = report.build(gw, start, end, by)
    if form == "json":
        click.echo(json.dumps(doc, indent=2))
    elif form == "csv":
        click.echo(report.as_csv(doc), nl=False)
    else:
        click.echo(report.as_text(doc))
