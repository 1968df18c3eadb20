"""`gateway ledger`: packages and their history."""

from __future__ import annotations

import dataclasses
import json

import click

from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, with_gateway
from gateway.core.lifecycle import State
from gateway.core.model import utc
from gateway.core.names import package_id as parse_package_id
from gateway.core.text import shown


@click.group("ledger")
def command() -> None:
    """Packages in the ledger, and each one's event history."""


@command.command("list")
@click.option("--partner", metavar="ID", help="Only this partner's packages.")
@click.option(
    "--state",
    type=click.Choice([*(s.value for s in State), "overdue"]),
    help="Only packages in this state; `overdue`: delivered, and no receipt in time.",
)
@click.option(
    "--direction", type=click.Choice(["in", "out"]), help="Only inbound or outbound packages."
)
@click.option(
    "--erased", is_flag=True, help="Only packages of which retention erased something, and what."
)
@json_option
@with_gateway
def list_(gw: Gateway, partner: str | None, state: str | None, direction: str | None,
          erased: bool, as_json: bool) -> None:  # fmt: skip
    """List packages, oldest first.

    \b
    Example:
      gateway ledger list --partner US-NCB --state delivered
      gateway ledger list --erased
    """
    cutoff = None
    if state == "overdue":
        state, cutoff = (
            "delivered",
            utc(gw.clock.now() - gw.settings.receipts_overdue_after_seconds),
        )
    packages = gw.ledger.packages(
        state=state, partner=partner, direction=direction, delivered_before=cutoff, erased=erased
    )
    rows = [dataclasses.asdict(p) for p in packages]
    emit(
        rows,
        as_json,
        lambda: (
            "\n".join(
                f"{p.package_id}  {p.direction:<3} {p.partner or '-':<12} {p.kind or '-':<11} "
                f"{p.state:<12} {p.updated_at}"
                + (f"  {shown(p.last_error)}" if p.last_error else "")
                + (f"  erased: {_erasures(p.erased)}" if erased and p.erased else "")
                for p in packages
            )
            or "no packages"
        ),
    )


def _erasures(erased: str) -> str:
    """What retention erased of a package, and when: 'inbound 2026-..., details 2026-...'."""
    return ", ".join(f"{what} {at}" for what, at in json.loads(erased).items())


@command.command("show")
@click.argument("package_id", metavar="PACKAGE_ID")
@json_option
@with_gateway
def show(gw: Gateway, package_id: str, as_json: bool) -> None:
    """Show one package and its event history.

    \b
    Example:
      gateway ledger show GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M
    """
    package = gw.ledger.package(parse_package_id(package_id))
    events = [dataclasses.asdict(e) for e in gw.ledger.events(package.package_id)]
    for e in events:
        e["detail"] = json.loads(e["detail"]) if e["detail"] else None
    result = {"package": dataclasses.asdict(package), "events": events}

    def text() -> str:
        lines = [f"{k:<18} {shown(str(v))}" for k, v in result["package"].items() if v is not None]  # type: ignore[attr-defined]
        lines.append("events:")
        lines += [
            f"  {e['at']}  {e['actor']:<8} {e['action']:<16} {e['state'] or '':<10} "
            f"{shown(json.dumps(e['detail'], ensure_ascii=False)) if e['detail'] else ''}"
            for e in events
        ]
        return "\n".join(lines)

    emit(result, as_json, text)
