"""`gateway partner`: register and inspect partner agencies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gateway.adapters import sshkeys
from gateway.admin import health, partners, policy
from gateway.app.gateway import Gateway
from gateway.cli import emit, json_option, reason_option, with_gateway
from gateway.core import approval as four_eyes
from gateway.core.model import Partner, utc


def regime_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`--regime` and `--channel-for`, shared by `partner add` and `partner set`."""
    f = click.option(
        "--channel-for",
        "channels",
        metavar="CC",
        multiple=True,
        help="A country the partner also serves, as a channel (e.g. an Interpol NCB); repeatable.",
    )(f)
    return click.option(
        "--regime",
        "specs",
        metavar="[KIND=]REGIME",
        multiple=True,
        help="A regime the partner may receive under: every kind it covers, or KIND only; repeatable.",
    )(f)


@click.group("partner")
def command() -> None:
    """Partner agencies: their keys, transport and health."""


needs_approval = click.option(
    "--needs-approval",
    "kinds",
    multiple=True,
    metavar="KIND|all",
    help="Packages of this kind (repeatable, or comma-separated; `all` for every kind) wait "
    "for a second operator's `gateway approve` before they are sealed.",
)


@command.command("add")
@click.argument("partner_id", metavar="ID")
@click.option(
    "--openpgp-key",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File with the partner's OpenPGP public key, and nothing else.",
)
@click.option(
    "--fingerprint",
    required=True,
    help="The key's 40-hex primary fingerprint, confirmed with the partner out of band.",
)
@click.option(
    "--push",
    "url",
    metavar="sftp://USER@HOST[:PORT]",
    help="Push partner: its SFTP server, which the gateway logs in to.",
)
@click.option(
    "--host-key",
    metavar="'TYPE BASE64'",
    help="Push partner: its server's SSH host key, confirmed out of band.",
)
@click.option(
    "--pull", is_flag=True, help="Pull partner: it logs in to this gateway's drop server."
)
@click.option(
    "--ssh-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pull partner: file with the SSH public key it logs in with.",
)
@click.option(
    "--upload-dir",
    default="upload",
    show_default=True,
    help="Push partner: folder on its server that packages are put in.",
)
@click.option(
    "--download-dir",
    default="download",
    show_default=True,
    help="Push partner: folder on its server that receipts and packages are fetched from.",
)
@click.option(
    "--show-recipient",
    is_flag=True,
    help="Leave the recipient key id visible in packages (hidden by default).",
)
@regime_options
@needs_approval
@reason_option
@with_gateway
def add(gw: Gateway, partner_id: str, openpgp_key: Path, fingerprint: str, url: str | None,
        host_key: str | None, pull: bool, ssh_key: Path | None, upload_dir: str, download_dir: str,
        show_recipient: bool, specs: tuple[str, ...], channels: tuple[str, ...],
        kinds: tuple[str, ...], reason: str) -> None:  # fmt: skip
    """Register a partner, pinning its OpenPGP key and its SSH key.

    The key file must hold exactly the key with FINGERPRINT, valid and not revoked.
    A push partner needs --push and --host-key; a pull partner --pull and --ssh-key.
    Nothing is sent to it until it has a regime for the package's kind (--regime, or
    `gateway partner set` later).

    \b
    Examples:
      gateway partner add US-NCB --openpgp-key us-ncb.asc \\
        --fingerprint 0123...CDEF --push sftp://gbacro@sftp.ncb.example:22 \\
        --host-key 'ssh-ed25519 AAAAC3Nz...' --reason 'MoU 2026, key checked by phone'
      gateway partner add AU-AFP --openpgp-key au-afp.asc --fingerprint 4567...89AB \\
        --pull --ssh-key au-afp.pub --regime MOU-AU-2026 --reason 'MoU 2026, keys checked by phone'
    """
    approval = four_eyes.parse_kinds(kinds)
    if specs or channels:
        policy.rules(gw, specs)  # a bad --regime is refused before anything is registered
    if pull and not url and ssh_key and not host_key:
        partner = partners.add_pull(
            gw, partner_id, openpgp_key, fingerprint, ssh_key, reason, not show_recipient, approval
        )
        said = f"added {partner.id}: it logs in to the drop server as {partner.id}"
    elif not pull and url and host_key and not ssh_key:
        partner = partners.add_push(gw, partner_id, openpgp_key, fingerprint, url, host_key, reason,
                                      upload_dir, download_dir, not show_recipient, approval)  # fmt: skip
        said = f"added {partner.id}: drop packages in {gw.home.outbound / partner.id}/<kind>/"
    else:
        raise click.UsageError("give either --push URL --host-key KEY, or --pull --ssh-key FILE")
    if specs or channels:
        policy.set_policy(gw, partner.id, specs, channels, reason)
    click.echo(said)


@command.command("set")
@click.argument("partner_id", metavar="ID")
@regime_options
@needs_approval
@click.option(
    "--no-approval", is_flag=True, help="No package for this partner needs a second approval."
)
@reason_option
@with_gateway
def set_(gw: Gateway, partner_id: str, specs: tuple[str, ...], channels: tuple[str, ...],
         kinds: tuple[str, ...], no_approval: bool, reason: str) -> None:  # fmt: skip
    """Set the regimes a partner may receive each kind under, the countries it serves,
    and the kinds that need a second operator's approval.

    Each option given replaces what was registered before: all --regime values together,
    all --channel-for values together (`--channel-for none` clears them), all
    --needs-approval values together (--no-approval clears them). For each kind, the
    first regime given is the default of packages that name none. Packages already taken
    in keep the state they were given.

    \b
    Examples:
      gateway partner set FR-CJN --regime EUFRA-2020-s1 --regime EUFRA-2020-s5 \\
        --reason 'TCA Title IX exchange'
      gateway partner set XX-NCB --regime request=MOU-XX-2026 --channel-for YY \\
        --reason 'Interpol NCB relays requests for YY'
      gateway partner set US-NCB --needs-approval conviction,extradition \\
        --reason 'records office policy 2026/3: two-person release for the US'
    """
    if kinds and no_approval:
        raise click.UsageError("give --needs-approval KIND or --no-approval, not both")
    if not (specs or channels or kinds or no_approval):
        raise click.UsageError(
            "give --regime, --channel-for, --needs-approval or --no-approval: there is nothing to set"
        )
    approval = four_eyes.parse_kinds(kinds)  # a bad kind is refused before anything changes
    if specs or channels:
        policy.set_policy(gw, partner_id, specs, channels, reason)
    if kinds or no_approval:
        partners.set_approval(gw, partner_id, approval, reason.strip())
    row = policy.describe(gw, partner_id)
    said = [*(f"{k}: {', '.join(v)}" for k, v in row["regimes"].items()),
            f"serves {', '.join(row['serves'])}"]  # fmt: skip
    if kinds or no_approval:
        said.append(f"approval needed for {approval}" if approval else "no approval needed")
    click.echo(f"{partner_id}: " + "; ".join(said))


def describe(gw: Gateway, partner: Partner) -> dict[str, Any]:
    """What an operator needs to know of one partner, as plain values; its health is the
    ledger's record of its contacts (`health.contact`), as `doctor` and `status` show it."""
    key = gw.keyring.key(partner.openpgp_key)
    host_key = partners.host_key_of(gw, partner)
    held = [p for p in gw.ledger.packages(partner=partner.id, state="held")]
    failed = gw.ledger.packages(partner=partner.id, state="failed", limit=1)
    waiting = [p for p in gw.ledger.packages(partner=partner.id, state="sealed") if p.last_error]
    problems = [p.last_error for p in held + waiting if p.last_error]
    return {
        "id": partner.id,
        "transport": partner.transport,
        "endpoint": f"sftp://{partner.user}@{partner.host}:{partner.port}"
        if partner.host
        else None,
        "upload_dir": partner.upload_dir,
        "download_dir": partner.download_dir,
        "enabled": bool(partner.enabled),
        "needs_approval": partner.approval,
        "openpgp_key": key.fingerprint,
        "openpgp_expires": utc(key.expires) if key.expires else None,
        "openpgp_problem": key.problem(),
        "host_key": sshkeys.fingerprint(host_key) if host_key else None,
        "ssh_key": sshkeys.fingerprint(partner.ssh_key) if partner.ssh_key else None,
        "added_at": partner.added_at,
        **policy.describe(gw, partner.id),
        **health.contact(partner, gw.ledger.contacts().get(partner.id), stuck=bool(held or failed)),
        "last_problem": problems[-1] if problems else None,
    }


@command.command("list")
@json_option
@with_gateway
def list_(gw: Gateway, as_json: bool) -> None:
    """List partners with key fingerprints, expiry, transport and health.

    \b
    Example:
      gateway partner list --json
    """
    rows = [describe(gw, p) for p in gw.ledger.partners()]
    emit(
        rows,
        as_json,
        lambda: (
            "\n".join(
                f"{r['id']:<20} {r['transport']:<5} {r['health']:<8} {r['openpgp_key']} "
                f"expires {r['openpgp_expires'] or 'never'}, last contact {r['last_ok'] or 'never'}"
                for r in rows
            )
            or "no partners: add one with `gateway partner add`"
        ),
    )


@command.command("show")
@click.argument("partner_id", metavar="ID")
@json_option
@with_gateway
def show(gw: Gateway, partner_id: str, as_json: bool) -> None:
    """Show one partner in full.

    \b
    Example:
      gateway partner show US-NCB
    """
    row = describe(gw, gw.ledger.partner(partner_id))
    emit(row, as_json, lambda: "\n".join(f"{k:<16} {v}" for k, v in row.items()))


@command.command("rotate-key")
@click.argument("partner_id", metavar="ID")
@click.option(
    "--openpgp-key",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File with the partner's new OpenPGP public key, and nothing else.",
)
@click.option(
    "--fingerprint", required=True, help="The new key's fingerprint, confirmed out of band."
)
@reason_option
@with_gateway
def rotate_key(
    gw: Gateway, partner_id: str, openpgp_key: Path, fingerprint: str, reason: str
) -> None:
    """Pin a partner's new OpenPGP key.

    New packages are sealed for the new key; receipts and packages signed by the old key
    are still accepted for keys.overlap_days. Held packages go on with `gateway retry`.

    \b
    Example:
      gateway partner rotate-key US-NCB --openpgp-key us-ncb-2027.asc \\
        --fingerprint 89AB...CDEF --reason 'annual rotation, checked by phone'
    """
    key = partners.rotate_key(gw, partner_id, openpgp_key, fingerprint, reason)
    click.echo(f"{partner_id} now uses {key.fingerprint}")


@command.command("disable")
@click.argument("partner_id", metavar="ID")
@reason_option
@with_gateway
def disable(gw: Gateway, partner_id: str, reason: str) -> None:
    """Stop all traffic with a partner: its packages wait as held, its logins are refused.

    \b
    Example:
      gateway partner disable US-NCB --reason 'partner reports a compromised server'
    """
    gw.ledger.set_enabled(partner_id, False, reason)
    click.echo(f"{partner_id} disabled")


@command.command("enable")
@click.argument("partner_id", metavar="ID")
@reason_option
@with_gateway
def enable(gw: Gateway, partner_id: str, reason: str) -> None:
    """Resume traffic with a partner; its held packages go on with `gateway retry`.

    \b
    Example:
      gateway partner enable US-NCB --reason 'server rebuilt, host key unchanged'
    """
    gw.ledger.set_enabled(partner_id, True, reason)
    click.echo(f"{partner_id} enabled")


@command.command("set-host-key")
@click.argument("partner_id", metavar="ID")
@click.option(
    "--host-key",
    required=True,
    metavar="'TYPE BASE64'",
    help="The server's new SSH host key, confirmed with the partner out of band.",
)
@reason_option
@with_gateway
def set_host_key(gw: Gateway, partner_id: str, host_key: str, reason: str) -> None:
    """Pin a push partner's new SSH host key, after its server was rebuilt.

    Packages held for a host key mismatch go on with `gateway retry`.

    \b
    Example:
      gateway partner set-host-key US-NCB --host-key 'ssh-ed25519 AAAAC3Nz...' \\
        --reason 'server rebuilt; new key read to us by phone, ticket 4711'
    """
    click.echo(
        f"{partner_id}: host key {partners.set_host_key(gw, partner_id, host_key, reason)} pinned"
    )
