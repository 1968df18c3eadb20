"""The home layout (SPEC section 3): every path the gateway uses, named once.

```
gateway.toml, ledger.db, gateway.lock
keys/gnupg/  keys/ssh/{id_ed25519,known_hosts,host_ed25519}
spool/outbound/<PARTNER>/<kind>/   the upstream system drops packages here
spool/inbound/<PARTNER>/<package_id>/
spool/quarantine/
spool/work/<package_id>/           taken-in plaintext, until it is sealed (gateway's own)
spool/sealed/<package_id>.pgp      sealed packages, until a receipt comes (gateway's own)
spool/mailbox/<PARTNER>/{download,upload}/
spool/incoming/<PARTNER>/          files fetched from a partner, until handled (gateway's own)
spool/receipts/{in,out}/           signed receipts received and sent: the evidence (gateway's own)
```
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

from gateway.core.errors import HomeMissing, SettingsInvalid
from gateway.core.names import KINDS
from gateway.core.settings import Settings, parse


class Home:
    """Paths below one gateway home folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings = root / "gateway.toml"
        self.regimes = root / "regimes.toml"  # the operator's own regimes, besides the shipped
        self.ledger = root / "ledger.db"
        self.lock = root / "gateway.lock"
        self.keys = root / "keys"
        self.gnupg = self.keys / "gnupg"
        self.ssh = self.keys / "ssh"
        self.ssh_identity = self.ssh / "id_ed25519"
        self.ssh_identity_pub = self.ssh / "id_ed25519.pub"
        self.known_hosts = self.ssh / "known_hosts"
        self.host_key = self.ssh / "host_ed25519"
        self.host_key_pub = self.ssh / "host_ed25519.pub"
        self.spool = root / "spool"
        self.outbound = self.spool / "outbound"
        self.inbound = self.spool / "inbound"
        self.quarantine = self.spool / "quarantine"
        self.work = self.spool / "work"
        self.sealed = self.spool / "sealed"
        self.mailbox = self.spool / "mailbox"
        self.incoming = self.spool / "incoming"
        self.receipts_in = self.spool / "receipts" / "in"
        self.receipts_out = self.spool / "receipts" / "out"

    @staticmethod
    def locate(option: str | None) -> Home:
        """The home from --home, else $GATEWAY_HOME, else the current folder."""
        chosen = option or os.environ.get("GATEWAY_HOME") or "."
        return Home(Path(chosen).absolute())

    def sealed_file(self, package_id: str) -> Path:
        """Where the sealed package is kept until it is acknowledged."""
        return self.sealed / f"{package_id}.pgp"

    def receipt_file(self, package_id: str) -> Path:
        """Where the gateway's own signed receipt for inbound package `package_id` is kept."""
        return self.receipts_out / f"{package_id}.receipt"

    def require(self) -> None:
        """Refuse to work in a folder that is not an initialised home."""
        if not self.settings.is_file():
            raise HomeMissing(
                f"{self.root} is not a gateway home (no gateway.toml): run "
                "`gateway init --id ID` there, or pass --home or set GATEWAY_HOME"
            )

    def create_folders(self) -> None:
        """Make the folders of a new home; keys and spool are for the gateway's user alone."""
        for folder in (self.keys, self.ssh, self.spool, self.outbound, self.inbound,
                       self.quarantine, self.work, self.sealed, self.mailbox, self.incoming,
                       self.receipts_in.parent, self.receipts_in, self.receipts_out):  # fmt: skip
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)

    def remove_created(self) -> None:
        """Undo a failed `init`: remove the keys, settings and ledger it wrote."""
        shutil.rmtree(self.gnupg, ignore_errors=True)
        for path in (
            self.ssh_identity,
            self.ssh_identity_pub,
            self.host_key,
            self.host_key_pub,
            self.known_hosts,
            self.settings,
            self.ledger,
        ):
            for leftover in (
                path,
                path.with_name(path.name + "-wal"),
                path.with_name(path.name + "-shm"),
            ):
                leftover.unlink(missing_ok=True)

    def create_partner_folders(self, partner: str) -> None:
        """Make `spool/outbound/<partner>/<kind>/` for every kind."""
        base = self.outbound / partner
        base.mkdir(mode=0o700, exist_ok=True)
        for kind in KINDS:
            (base / kind).mkdir(mode=0o700, exist_ok=True)
        for folder in (self.inbound / partner, self.incoming / partner):
            folder.mkdir(mode=0o700, exist_ok=True)


def load_settings(path: Path) -> Settings:
    """Read and check `gateway.toml`; an unknown or ill-typed setting is an error."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise HomeMissing(
            f"{path} not found: this is not a gateway home; run `gateway init --id ID` "
            "or pass --home"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsInvalid(f"{path} is not valid TOML ({e}): fix the file") from None
    return parse(data, str(path))
