"""`gateway doctor`: check the home, the keys and the partners; say what to do."""

from __future__ import annotations

import sys

import click

from gateway.admin import health
from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, with_gateway


@click.command("doctor")
@click.option("--offline", is_flag=True, help="Do not connect to partners.")
@json_option
@with_gateway
def command(gw: Gateway, offline: bool, as_json: bool) -> None:
    """Check permissions, keys and expiry, partner health and host keys, packages held,
    failed or overdue, disk, ledger.

    Nothing is sent to partners. Exits 1 if anything fails; each line says what to do.

    \b
    Example:
      gateway doctor
    """
    findings = [*health.permissions(gw), *health.keys(gw), *health.partners(gw, connect=not offline),
                *health.packages(gw), *health.disk(gw), *health.ledger(gw)]  # fmt: skip
    emit([f.__dict__ for f in findings], as_json, lambda: "\n".join(f.line() for f in findings))
    if any(f.level == "fail" for f in findings):
        sys.exit(1)
