"""`gateway backup` and `gateway restore`: the home, copied while the daemon works, and
brought back into an empty folder with the restore recorded in the audit trail.

What a backup holds is what a new home needs to carry on: the settings, the keys, the
ledger (one consistent snapshot, `Ledger.snapshot`), the audit checkpoints, and of the
spool only what the snapshot's packages still need: plaintext not yet sealed, sealed
files not yet receipted (and their published copies for pull partners), inbound
deliveries not yet taken; and the signed receipts, the evidence of each exchange. Checkpoints are copied before the ledger,
so none names an event the snapshot lacks.

Restore is offline: it writes the files, records `restore` (naming the backup and the
last event it held) and signs a checkpoint over it. Reconciling with partners is the
daemon's first turn: delivery is idempotent by name and hash, so a sealed package whose
file already lies on the partner's side with the same SHA-256 is recorded delivered
(`already_there`), never sent again (pipeline/deliver.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gateway.adapters import bundle
from gateway.adapters.files import sha256_file
from gateway.adapters.gpg import Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.app.gateway import Gateway
from gateway.core import backup
from gateway.core.clock import Clock
from gateway.core.errors import BackupDamaged, RestoreRefused
from gateway.core.lifecycle import FINAL, MAY_HOLD_PLAINTEXT, State
from gateway.core.model import utc

#: Names never backed up: temporary files (a checkpoint being signed: `.NAME.tmp`), gpg's
#: locks (`.#lk...`) and the agent's sockets and seed in keys/gnupg.
_SKIPPED = (".", "S.", "random_seed")


@dataclasses.dataclass(frozen=True)
class Written:
    """What a backup holds, for the operator."""

    path: Path
    files: int
    bytes: int
    last_event: int
    encrypted_to: str | None


def _tree(root: Path, folder: Path) -> Iterator[tuple[str, Path]]:
    """Every regular file below `folder`, with its path relative to `root`; links skipped."""
    for dirpath, _dirs, names in os.walk(folder):
        for name in sorted(names):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink() and not name.startswith(_SKIPPED):
                yield path.relative_to(root).as_posix(), path


def _wanted(home: Home, snapshot: Ledger) -> Iterator[tuple[str, Path]]:
    """The spool files the snapshot's packages still need, by home path."""
    root = home.root
    pull = {p.id for p in snapshot.partners() if p.transport == "pull"}
    for package in snapshot.packages():
        pid = package.package_id
        if package.direction == "out":
            if package.state in MAY_HOLD_PLAINTEXT:
                yield from _tree(root, home.work / pid)
            if package.state not in FINAL:
                yield home.sealed_file(pid).relative_to(root).as_posix(), home.sealed_file(pid)
                if package.partner in pull:
                    copy = home.mailbox / str(package.partner) / "download" / f"{pid}.pgp"
                    yield copy.relative_to(root).as_posix(), copy
        elif package.state is State.ACCEPTED:
            yield from _tree(root, home.inbound / str(package.partner) / pid)


def _stage(name: str, source: Path, staging: Path, files: dict[str, tuple[int, str]]) -> None:
    """Copy one file into the staging folder, hashing it; a file gone meanwhile is skipped
    (a package receipted or taken since the snapshot: the restored ledger still waits
    for it, as the backup's moment did)."""
    target = staging / name
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    try:
        with source.open("rb") as src, target.open("xb") as out:
            while chunk := src.read(1024 * 1024):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        return
    files[name] = (size, digest.hexdigest())


def take(gw: Gateway, dest: Path, encrypt_key: Path | None = None,
         encrypt_fingerprint: str | None = None) -> Written:  # fmt: skip
    """Write a backup of the home to `dest` (a new file) while the daemon may be working.

    With `encrypt_key` (a public key file holding exactly `encrypt_fingerprint`) the tar is
    encrypted to that key alone, for an offline key kept away from this host.
    """
    home = gw.home
    dest = dest.absolute()
    if dest.exists():
        raise FileExistsError(f"{dest} already exists: a backup never overwrites a file")
    with tempfile.TemporaryDirectory(prefix=".gw-backup-", dir=dest.parent) as tmp:
        staging = Path(tmp) / "home"
        staging.mkdir(mode=0o700)
        files: dict[str, tuple[int, str]] = {}
        for name, path in [("gateway.toml", home.settings), ("regimes.toml", home.regimes),
                           *_tree(home.root, home.keys),
                           *_tree(home.root, home.spool / "audit"),
                           *_tree(home.root, home.spool / "receipts")]:  # fmt: skip
            _stage(name, path, staging, files)
        gw.ledger.snapshot(staging / "ledger.db")  # after the checkpoints: none is newer
        snapshot = Ledger(staging / "ledger.db", gw.ledger.actor, gw.clock)
        try:
            last_event, last_hash = snapshot.head()
            for name, path in _wanted(home, snapshot):
                _stage(name, path, staging, files)
        finally:
            snapshot.close()
        files["ledger.db"] = (
            (staging / "ledger.db").stat().st_size,
            sha256_file(staging / "ledger.db"),
        )
        manifest = backup.Manifest(gw.settings.gateway_id, utc(gw.clock.now()), last_event,
                                   last_hash, files)  # fmt: skip
        members = [(name, staging / name) for name in sorted(files)]
        if encrypt_key is None:
            bundle.write(dest, manifest, members)
        else:
            plain = Path(tmp) / "backup.tar"
            bundle.write(plain, manifest, members)
            _encrypt(gw, plain, dest, encrypt_key, str(encrypt_fingerprint), Path(tmp))
    gw.ledger.record("backup", detail={"path": str(dest), "last_event": last_event,
                                       "files": len(files) + 1, "encrypted_to": encrypt_fingerprint})  # fmt: skip
    return Written(dest, len(files) + 1, dest.stat().st_size, last_event, encrypt_fingerprint)


def _encrypt(
    gw: Gateway, plain: Path, dest: Path, key_file: Path, fingerprint: str, tmp: Path
) -> None:
    """Encrypt `plain` to the offline key into `dest`, from a keyring of its own: the
    gateway's keyring pins partners only."""
    short = Path(tempfile.mkdtemp(prefix="gwb", dir="/tmp"))  # gpg-agent's socket path is short
    keyring = Keyring.create(short / "gnupg", gw.settings.gnupg_timeout_seconds, gw.clock)
    try:
        keyring.import_pinned(key_file, fingerprint)
        part = tmp / "backup.tar.pgp"
        keyring.encrypt(plain, part, fingerprint)
        bundle.publish_new(part, dest)
    finally:
        keyring.stop_agent()
        keyring.close()
        shutil.rmtree(short, ignore_errors=True)


def restore(source: Path, home: Home, actor: str, clock: Clock | None = None) -> Gateway:
    """Restore the backup `source` into `home`, an empty or new folder; record it.

    Refuses a folder with anything in it. Every file is checked against the manifest;
    on any failure, what was written is removed again.
    """
    if home.root.exists() and (present := sorted(os.listdir(home.root))):
        raise RestoreRefused(
            f"{home.root} is not empty (it holds {', '.join(present[:3])}{', ...' if len(present) > 3 else ''}): "
            "restore into a new, empty folder; a home is never overwritten by a backup"
        )
    created = not home.root.exists()
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        manifest = bundle.read(source, home.root)
        home.settings.chmod(0o640)
        home.create_folders()
        gw = Gateway(home, actor, clock)
        if gw.ledger.head() != (manifest.last_event, manifest.last_hash):
            gw.close()
            raise BackupDamaged(
                f"its ledger does not end at event {manifest.last_event} as its manifest says"
            )
    except BaseException:
        for child in home.root.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if created:
            home.root.rmdir()
        raise
    for partner in gw.ledger.partners():
        home.create_partner_folders(partner.id)
        if partner.transport == "pull":
            for folder in ("download", "upload"):
                (home.mailbox / partner.id / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    gw.ledger.record("restore", detail={
        "backup": source.name, "backup_sha256": sha256_file(source), "created_at": manifest.created_at,
        "last_event": manifest.last_event, "last_hash": manifest.last_hash})  # fmt: skip
    gw.audit.checkpoint()  # signs the restore event: what lets `audit verify` excuse the gap
    return gw
