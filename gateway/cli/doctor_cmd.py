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
@json_option
@click.pass_obj
def command(state: State, offline: bool, as_json: bool) -> None:
    """Check permissions, keys and expiry, partner reachability and host keys, disk, ledger.

    Nothing is sent to partners. Exits 1 if anything fails; each line says what to do.

    \b
    Example:
      gateway doctor
    """
    try:
        with state.gateway() as gw:
            findings = check(gw, offline)
    except Exception as err:
        if (found := trouble(err, state.home.ledger)) is None:
            raise
        findings = [health.Finding("fail", f"ledger: {found}")]  # nothing else can be checked
    emit([f.__dict__ for f in findings], as_json, lambda: "\n".join(f.line() for f in findings))
    if any(f.level == "fail" for f in findings):
        sys.exit(1)


def check(gw: Gateway, offline: bool) -> list[health.Finding]:
    """Every finding, in the order shown."""
    ledger = list(health.ledger(gw))
    if ledger[0].level == "fail":  # damaged: what the rest would read cannot be trusted
        return [*health.permissions(gw), *ledger]
    return [*health.permissions(gw), *ledger, *health.protection(gw), *health.keys(gw),
            *health.partners(gw, connect=not offline), *health.disk(gw)]  # fmt: skip
