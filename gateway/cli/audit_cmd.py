"""`gateway audit`: check and export the audit trail."""

from __future__ import annotations

import json

import click

from gateway.admin import record as s62
from gateway.app.gateway import Gateway
from gateway.cli import emit, fail, json_option, with_gateway
from gateway.core.names import package_id as parse_package_id
from gateway.core.text import shown


@click.group("audit")
def command() -> None:
    """The tamper-evident audit trail (DPA 2018 s.62)."""


@command.command("verify")
@with_gateway
def verify(gw: Gateway) -> None:
    """Recompute the hash chain and check every signed checkpoint; exit 1 if broken.

    \b
    Example:
      gateway audit verify
    """
    verdict = gw.audit.verify()
    if verdict.problem:
        fail(
            f"{verdict.problem}; the trail after it cannot be trusted: restore ledger.db from backup and investigate"
        )
    click.echo(
        f"audit trail intact: {verdict.events} events, {verdict.checkpoints} signed checkpoints"
    )
    for r in verdict.restores:
        click.echo(f"restored at event {r.event_id} ({r.at}) from {shown(r.backup)}, which held "
                   f"events up to {r.last_event}: what the lost home did after that is not in this trail")  # fmt: skip
    if verdict.lost:
        click.echo(f"{len(verdict.lost)} checkpoints of the lost home, up to event {max(verdict.lost)}, "
                   "were not required: they sign events after its backup")  # fmt: skip


@command.command("checkpoint")
@with_gateway
def checkpoint(gw: Gateway) -> None:
    """Sign the trail's newest event with the gateway's key, kept outside the ledger.

    The daemon also writes one every audit.checkpoint_seconds and when it stops.

    \b
    Example:
      gateway audit checkpoint
    """
    click.echo(f"checkpoint written: {gw.audit.checkpoint()}")


@command.command("export")
@click.option(
    "--since",
    metavar="TIME",
    help="Only events at or after this time, e.g. 2026-11-01T00:00:00Z; a time without an "
    "offset (2026-11-01T00:00:00) is read as UTC, whatever the machine's time zone.",
)
@with_gateway
def export(gw: Gateway, since: str | None) -> None:
    """Write the audit trail as JSON lines (the export itself is recorded).

    \b
    Example:
      gateway audit export --since 2026-11-01T00:00:00Z > audit.jsonl
    """
    for row in gw.audit.export(since):
        click.echo(json.dumps(row, ensure_ascii=False, sort_keys=True))


@command.command("show")
@click.argument("package_id", metavar="PACKAGE_ID")
@json_option
@with_gateway
def show(gw: Gateway, package_id: str, as_json: bool) -> None:
    """The DPA 2018 s.62 record of one package: who, when, what, to whom, on what basis,
    its every event and every consultation of it (this one is recorded too).

    \b
    Example:
      gateway audit show GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M --json
    """
    doc = s62.record(gw, parse_package_id(package_id))
    emit(doc, as_json, lambda: "\n".join(shown(line) for line in s62.text(doc)))
