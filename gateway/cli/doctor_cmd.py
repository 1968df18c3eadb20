"""`gateway doctor`: check the home, the keys and the partners; say what to do."""

from __future__ import annotations

import sys

import click

from gateway.admin import health
from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, with_gateway


@click.command("doctor")
@click.option("--offline", is_flag=True, help="Do not connect to partners.")
@click.option(
    "--config-only",
    is_flag=True,
    help="Check only the settings and the home's files and owner (fast; systemd's ExecStartPre).",
)
@json_option
@with_gateway
def command(gw: Gateway, offline: bool, config_only: bool, as_json: bool) -> None:
    """Check permissions, keys and expiry, partner health and host keys, packages held,
    failed or overdue, disk, ledger.

    Nothing is sent to partners. Exits 1 if anything fails; each line says what to do.
    A gateway.toml that does not load fails with its own error and exit code.

    \b
    Example:
      gateway doctor
      gateway doctor --config-only
    """
    findings = [*health.owner(gw), *health.permissions(gw)]
    if not config_only:
        findings += [*health.keys(gw), *health.partners(gw, connect=not offline),
                     *health.packages(gw), *health.disk(gw), *health.ledger(gw)]  # fmt: skip
    emit([f.__dict__ for f in findings], as_json, lambda: "\n".join(f.line() for f in findings))
    if any(f.level == "fail" for f in findings):
        sys.exit(1)
