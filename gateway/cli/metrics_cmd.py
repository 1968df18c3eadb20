"""`gateway metrics`: the Prometheus metrics of this home, once."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.app.gateway import Gateway
from gateway.cli import with_gateway


@click.command("metrics")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Write them to this file (atomically, for node_exporter) instead of stdout.")  # fmt: skip
@with_gateway
def command(gw: Gateway, textfile: Path | None) -> None:
    """Print the metrics in the Prometheus text format, as `metrics.listen` serves them.

    The daemon serves them itself (`metrics.listen`) and rewrites `metrics.textfile`;
    this command is for a look by hand, or a timer where no daemon runs.

    \b
    Example:
      gateway metrics | grep gateway_packages
    """
    exporter = gw.metrics()
    if textfile:
        exporter.write(textfile)
    else:
        click.echo(exporter.text().decode(), nl=False)
