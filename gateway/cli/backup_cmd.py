"""`gateway backup`: an online, consistent backup of the home."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.admin import backup
from gateway.app.gateway import Gateway
from gateway.cli import with_gateway
from gateway.core.errors import UsageError


@click.command("backup")
@click.argument("dest", metavar="DEST", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--encrypt-to", "key_file", metavar="KEYFILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Encrypt the backup to the one OpenPGP public key in this file (an offline key).")  # fmt: skip
@click.option("--fingerprint", metavar="FPR",
              help="The 40-hex fingerprint KEYFILE must hold, checked like a partner's key.")  # fmt: skip
@with_gateway
def command(gw: Gateway, dest: Path, key_file: Path | None, fingerprint: str | None) -> None:
    """Write a backup of the home to DEST, a new tar file, while the daemon works.

    It holds the settings, the keys, a consistent copy of the ledger, the audit
    checkpoints, and the spool files its packages still need; its manifest lists each
    file's SHA-256. It holds secret keys and unsealed plaintext: keep it as you keep
    the host, or encrypt it with --encrypt-to. Restore it with `gateway restore`.

    \b
    Example:
      gateway backup /var/backups/gateway/$(date +%F).tar
      gateway backup /mnt/offsite/gw.tar.pgp --encrypt-to offline.asc --fingerprint 0123...
    """
    if (key_file is None) != (fingerprint is None):
        raise UsageError("--encrypt-to and --fingerprint go together: give both, or neither")
    written = backup.take(gw, dest, key_file, fingerprint)
    click.echo(f"backup written: {written.path}, {written.files} files, {written.bytes} bytes, "
               f"ledger up to event {written.last_event}"
               + (f", encrypted to {written.encrypted_to}" if written.encrypted_to else ""))  # fmt: skip
