"""A backup's manifest (`gateway backup`): what it holds, each file with its SHA-256. Pure.

The manifest is the first member of the backup's tar, `manifest.json`; every other member
is a file of the home under its path there, and `restore` refuses a member it does not
list, a listed file that is missing, and any byte that does not match its hash.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Final

from gateway.core.errors import BackupDamaged

SCHEMA: Final = "gateway-backup/1"
MANIFEST: Final = "manifest.json"
#: What a backup may hold, as paths in the home: nothing else is ever restored.
_ALLOWED: Final = re.compile(
    r"(gateway\.toml|regimes\.toml|ledger\.db|keys/(gnupg|ssh)(/[^/]+)+|spool/(audit|sealed|work|inbound|"
    r"mailbox|receipts)(/[^/]+)+)"
)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What one backup holds: whose, when, the ledger's last event, and its files."""

    gateway: str
    created_at: str
    last_event: int
    last_hash: str
    files: dict[str, tuple[int, str]]  # path in the home -> (size, sha256)

    def render(self) -> bytes:
        """The manifest as UTF-8 JSON."""
        doc = {"schema": SCHEMA, "gateway": self.gateway, "created_at": self.created_at,
               "ledger": {"last_event": self.last_event, "last_hash": self.last_hash},
               "files": {p: {"size": s, "sha256": h} for p, (s, h) in sorted(self.files.items())}}  # fmt: skip
        return json.dumps(doc, indent=2, sort_keys=True).encode()


def check_path(path: str) -> str:
    """`path` if a backup may hold a file there, else raise: no `..`, no absolute path,
    nothing outside the settings, the home's regimes, the ledger, the keys and the
    gateway's own spool."""
    parts = path.split("/")
    if not _ALLOWED.fullmatch(path) or any(p in ("", ".", "..") for p in parts):
        raise BackupDamaged(
            f"the backup holds {path!r}, which no backup holds: it is not one of ours"
        )
    return path


def parse(data: bytes) -> Manifest:
    """Read a backup's manifest; anything malformed raises `BackupDamaged`."""
    try:
        doc: Any = json.loads(data)
        if doc["schema"] != SCHEMA:
            raise ValueError(f"schema {doc['schema']!r}")
        files = {
            check_path(str(p)): (int(f["size"]), str(f["sha256"])) for p, f in doc["files"].items()
        }
        return Manifest(str(doc["gateway"]), str(doc["created_at"]), int(doc["ledger"]["last_event"]),
                        str(doc["ledger"]["last_hash"]), files)  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BackupDamaged(f"its manifest is not a gateway backup's ({e})") from None
