"""`gateway ledger`: packages and their history."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import click

from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, with_gateway
from gateway.core.errors import UsageError
from gateway.core.lifecycle import State
from gateway.core.model import Package, utc
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
    "--due-within",
    metavar="N(d|h)",
    help="Only packages whose duty (notify, answer) is open and due within N days or hours.",
)
@click.option("--late", is_flag=True, help="Only packages whose duty is open past its period.")
@click.option(
    "--erased", is_flag=True, help="Only packages of which retention erased something, and what."
)
@json_option
@with_gateway
def list_(gw: Gateway, partner: str | None, state: str | None, direction: str | None,
          due_within: str | None, late: bool, erased: bool, as_json: bool) -> None:  # fmt: skip
    """List packages, oldest first.

    \b
    Examples:
      gateway ledger list --partner US-NCB --state delivered
      gateway ledger list --due-within 3d
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
    if due_within is not None or late:
        chosen = _due(gw, due_within, late)
        packages = [p for p in packages if p.package_id in chosen]
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


def _due(gw: Gateway, within: str | None, late: bool) -> dict[str, str]:
    """Package id -> due time, of open duties late now, or due before now + `within`."""
    match = re.fullmatch(r"([0-9]{1,5})([dh])", within or "0d")
    if match is None:
        raise UsageError(f"--due-within {within!r}: give a number and d or h, e.g. 3d or 12h")
    now = gw.clock.now()
    horizon = utc(now + int(match[1]) * (86400 if match[2] == "d" else 3600))
    chosen = {}
    for s in gw.duties.standings():
        due = s.duty.due_at
        if (late and s.state == "late") or (
            within and due and s.state in ("open", "due-soon", "late") and due <= horizon
        ):
            chosen[s.duty.package_id] = str(due)
    return chosen


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
    result = {"package": dataclasses.asdict(package), **_obligations(gw, package.package_id),
              "events": events}  # fmt: skip

    def text() -> str:
        lines = [f"{k:<18} {shown(str(v))}" for k, v in result["package"].items() if v is not None]
        if duty := result.get("duty"):
            lines.append(f"{'duty':<18} {duty['duty']} by {duty['due_at'] or '(starts on delivery)'}: {duty['state']}"
                         + (f", met by {duty['met_by']} at {duty['met_at']}" if duty["met_at"] else ""))  # fmt: skip
        for key in ("supersedes", "superseded_by"):
            for other in result.get(key, []):
                lines.append(
                    f"{key:<18} {other['package_id']}  {other['state']}  {other['created_at']}"
                )
        lines.append("events:")
        lines += [
            f"  {e['at']}  {e['actor']:<8} {e['action']:<16} {e['state'] or '':<10} "
            f"{shown(json.dumps(e['detail'], ensure_ascii=False)) if e['detail'] else ''}"
            for e in events
        ]
        return "\n".join(lines)

    emit(result, as_json, text)


def _obligations(gw: Gateway, package_id: str) -> dict[str, Any]:
    """The package's duty and where it stands, and the amendments it belongs with."""
    found: dict[str, Any] = {}
    for s in gw.duties.standings(package_id):
        found["duty"] = {**dataclasses.asdict(s.duty), "state": s.state}
    chain = []
    if (amended := gw.duties.supersedes(package_id)) and (p := gw.ledger.find(amended)):
        chain.append(p)
    found["supersedes"] = [_brief(p) for p in chain]
    found["superseded_by"] = [_brief(gw.ledger.package(pid))
                              for pid in gw.duties.obligations.amending(package_id)]  # fmt: skip
    return found


def _brief(package: Package) -> dict[str, Any]:
    return {"package_id": package.package_id, "state": package.state.value,
            "created_at": package.created_at, "kind": package.kind}  # fmt: skip
