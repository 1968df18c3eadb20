"""`gateway regimes`: the legal bases packages may travel under, and their clocks."""

from __future__ import annotations

import dataclasses

import click

from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, with_gateway


@click.command("regimes")
@json_option
@with_gateway
def command(gw: Gateway, as_json: bool) -> None:
    """List the regimes in force: the shipped ones and the home's own regimes.toml.

    Each names the kinds it covers and its clocks: notify within N days of recording,
    answer within N working days of receipt, batches at least every N months.

    \b
    Example:
      gateway regimes --json
    """
    regimes = list(gw.duties.regimes.values())
    rows = [dataclasses.asdict(r) for r in regimes]

    def clocks(r: dict[str, object]) -> str:
        parts = [f"notify within {r['notify_within_days']} days" if r["notify_within_days"] else "",
                 f"answer within {r['answer_within_working_days']} working days ({r['calendar'] or gw.settings.duties_calendar})"
                 if r["answer_within_working_days"] else "",
                 f"at least every {r['batch_every_months']} months" if r["batch_every_months"] else ""]  # fmt: skip
        return "; ".join(p for p in parts if p) or "no clock"

    emit(rows, as_json, lambda: "\n".join(
        f"{r['id']:<16} {', '.join(r['kinds'])}: {clocks(r)}\n{'':<16} {r['citation']}" for r in rows))  # fmt: skip
