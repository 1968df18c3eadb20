"""`gateway restore`: bring a backup back into an empty home."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.admin import backup
from gateway.app.gateway import actor
from gateway.cli import State


@click.command("restore")
@click.argument("source", metavar="SRC",
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.pass_obj
def command(state: State, source: Path) -> None:
    """Restore the backup SRC (a tar from `gateway backup`) into the home, which must be
    empty or not exist yet.

    Every file is checked against the backup's manifest. The restore is recorded in the
    audit trail with the last event the backup held, and signed in a checkpoint, so
    `audit verify` shows the gap. Then start the daemon: its first turn with each partner
    records as delivered, without sending again, every package already on the partner's
    side with the same SHA-256. An encrypted backup is decrypted first, with
    `gpg --output SRC --decrypt SRC.pgp` where the offline key is.

    \b
    Example:
      gateway --home /var/lib/gateway-new restore /var/backups/gateway/2026-12-06.tar
    """
    with backup.restore(source, state.home, actor(), state.clock) as gw:
        restored = gw.ledger.events_of("restore")[-1]
    click.echo(f"restored {source} into {state.home.root}: the backup held events up to "
               f"{restored.id - 1}; the restore is event {restored.id}")  # fmt: skip
    click.echo("next: `gateway audit verify`, then start the daemon (`gateway run`)")
