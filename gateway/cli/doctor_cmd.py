"""`gateway doctor`: check the home, the keys and the partners; say what to do."""

from __future__ import annotations

import sys

import click

from gateway.adapters.ledger import trouble
from gateway.admin import health
from gateway.app.gateway import Gateway
from gateway.cli import State, emit, json_option


@click.command("doctor")
@click.option("--offline", is_flag=True, help="Do not connect to partners.")
@click.option(
    "--config-only",
    is_flag=True,
    help="Check only the settings and the home's files and owner (fast; systemd's ExecStartPre).",
)
@json_option
@click.pass_obj
def command(state: State, offline: bool, config_only: bool, as_json: bool) -> None:
    """Check permissions, keys and expiry, partner health and host keys, packages held,
    failed or overdue, disk, ledger.

    Nothing is sent to partners. Exits 1 if anything fails; each line says what to do.
    A gateway.toml that does not load fails with its own error and exit code.

    \b
    Example:
      gateway doctor
      gateway doctor --config-only
    """
    try:
        with state.gateway() as gw:
            findings = check(gw, offline, config_only)
    except Exception as err:
        if (found := trouble(err, state.home.ledger)) is None:
            raise
        findings = [health.Finding("fail", f"ledger: {found}")]  # nothing else can be checked
    emit([f.__dict__ for f in findings], as_json, lambda: "\n".join(f.line() for f in findings))
    if any(f.level == "fail" for f in findings):
        sys.exit(1)


def check(gw: Gateway, offline: bool, config_only: bool = False) -> list[health.Finding]:
    """Every finding, in the order shown (`config_only`: the home's owner and files alone)."""
    home = [*health.owner(gw), *health.permissions(gw)]
    if config_only:
        return home
    ledger = list(health.ledger(gw))
    if ledger[0].level == "fail":  # damaged: what the rest would read cannot be trusted
        return [*home, *ledger]
    return [*home, *ledger, *health.protection(gw), *health.keys(gw),
            *health.partners(gw, connect=not offline), *health.packages(gw),
            *health.disk(gw)]  # fmt: skip
