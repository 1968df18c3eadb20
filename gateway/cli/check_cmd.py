"""`gateway check`: a monitoring plugin (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""

from __future__ import annotations

import json
import sys

import click

from gateway.admin import check
from gateway.cli import State, json_option


@click.command("check")
@json_option
@click.pass_obj
def command(state: State, as_json: bool) -> None:
    """Check the home as a monitoring plugin: one status line with perfdata after `|`.

    Held, failed and overdue packages, quarantine, duties (notifications and answers)
    due soon and late, key expiry, partners down, backlog age, free disk, the audit chain and its newest checkpoint, and whether `gateway
    run` holds the home; each judged by the [check] settings. Exits 0 OK, 1 WARNING,
    2 CRITICAL, 3 UNKNOWN (the check itself could not run), as Nagios, Icinga and
    Checkmk expect.

    \b
    Example:
      gateway check
      gateway check --json
    """
    try:
        with state.gateway() as gw:
            found = list(check.conditions(gw))
    except Exception as err:  # the check could not run: that is UNKNOWN, never OK
        status, line, found = check.UNKNOWN, f"GATEWAY UNKNOWN - {err}", []
    else:
        status, line = check.verdict(found)
    if as_json:
        click.echo(json.dumps({"status": check.NAMES[status], "exit_code": status,
                               "conditions": [{**c.__dict__, "status": check.NAMES[c.status]} for c in found]},
                              indent=2))  # fmt: skip
    else:
        click.echo(line)
    sys.exit(status)
