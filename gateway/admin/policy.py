"""Partner policy: the regimes under which a partner may receive each kind, and the
countries it serves besides its own (a channel, e.g. an Interpol NCB)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.app.gateway import Gateway
from gateway.core.duties import country
from gateway.core.errors import UsageError
from gateway.core.names import kind as parse_kind


def rules(gw: Gateway, specs: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, regime) pairs from `--regime` values: `REGIME` (every kind it covers) or
    `KIND=REGIME`; first given, first chosen."""
    found: list[tuple[str, str]] = []
    for spec in specs:
        kind, _, rid = spec.rpartition("=")
        regime = gw.duties.regimes.get(rid)
        if regime is None:
            raise UsageError(
                f"--regime {spec}: no regime {rid!r}: `gateway regimes` lists them "
                f"({', '.join(gw.duties.regimes)}); add your own in {gw.home.regimes}"
            )
        kinds = [parse_kind(kind)] if kind else list(regime.kinds)
        if kind and kind not in regime.kinds:
            raise UsageError(f"--regime {spec}: {rid} covers {', '.join(regime.kinds)}, not {kind}")
        found += [(k, rid) for k in kinds if (k, rid) not in found]
    return found


def set_policy(gw: Gateway, partner_id: str, specs: Sequence[str], channels: Sequence[str],
               reason: str) -> None:  # fmt: skip
    """Replace what was given: the partner's regimes if `specs`, its channels if `channels`
    (`none` clears them)."""
    gw.ledger.partner(partner_id)
    if not specs and not channels:
        raise UsageError("give --regime and/or --channel-for: there is nothing to set")
    countries = [] if list(channels) == ["none"] else [country(c) for c in channels]
    gw.duties.obligations.set_policy(partner_id, rules(gw, specs) if specs else None,
                                     countries if channels else None, reason)  # fmt: skip


def describe(gw: Gateway, partner_id: str) -> dict[str, Any]:
    """The partner's policy as plain values: regimes by kind, countries served."""
    by_kind: dict[str, list[str]] = {}
    for kind, rid, _ in gw.duties.obligations.regimes_of(partner_id):
        by_kind.setdefault(kind, []).append(rid)
    return {"regimes": by_kind,
            "serves": [partner_id[:2], *gw.duties.obligations.channels(partner_id)]}  # fmt: skip
