"""The gateway's own keys: creating a home with them, and rotating the OpenPGP key."""

from __future__ import annotations

from gateway.adapters import sshkeys
from gateway.adapters.clock import SystemClock
from gateway.adapters.files import write_atomic
from gateway.adapters.gpg import KeyInfo, Keyring
from gateway.adapters.home import Home
from gateway.app.gateway import Gateway
from gateway.core import settings as settings_mod
from gateway.core.clock import Clock
from gateway.core.errors import HomeExists
from gateway.core.names import authority_id


def init(home: Home, gateway_id: str, actor: str, clock: Clock | None = None) -> Gateway:
    """Create a new home: settings, ledger, folders, OpenPGP key, SSH keys; refuse to overwrite."""
    authority_id(gateway_id)
    clock = clock or SystemClock()
    if home.settings.exists() or home.ledger.exists() or home.gnupg.exists():
        raise HomeExists(f"{home.root} is already a gateway home; nothing was changed")
    home.root.mkdir(parents=True, exist_ok=True)
    home.create_folders()
    settings = settings_mod.parse({"gateway": {"id": gateway_id}})
    try:
        keyring = Keyring.create(home.gnupg, settings.gnupg_timeout_seconds, clock)
        try:
            fpr = keyring.generate(gateway_id, settings.gnupg_key_days)
        finally:
            keyring.stop_agent()
        ssh_line = sshkeys.generate(home.ssh_identity, f"{gateway_id} gateway")
        sshkeys.generate(home.host_key, f"{gateway_id} drop server")
        home.known_hosts.touch(mode=0o600)
        # gateway.toml last: its presence is what makes the folder a home.
        write_atomic(home.settings, settings_mod.render(gateway_id).encode(), mode=0o640)
        gw = Gateway(home, actor, clock)
    except BaseException:
        home.remove_created()
        raise
    gw.ledger.record(
        "init", detail={"gateway_id": gateway_id, "ssh_key": sshkeys.fingerprint(ssh_line)}
    )
    gw.ledger.add_own_key(fpr, {"by": "init"})
    return gw


def rotate(gw: Gateway, reason: str) -> KeyInfo:
    """Make a new OpenPGP key for the gateway; it signs from now on.

    The old key stays in the keyring, so packages still addressed to it open.
    """
    fpr = gw.keyring.generate(gw.settings.gateway_id, gw.settings.gnupg_key_days)
    gw.ledger.add_own_key(fpr, {"by": "keys rotate", "reason": reason, "previous": gw.own_key})
    return gw.keyring.key(fpr)
