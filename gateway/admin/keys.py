"""The gateway's own keys: creating a home with them, protecting them, rotating the OpenPGP key."""

from __future__ import annotations

from gateway.adapters import sshkeys
from gateway.adapters.clock import SystemClock
from gateway.adapters.files import write_atomic
from gateway.adapters.gpg import KeyInfo, Keyring
from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.lock import exclusive
from gateway.adapters.passphrase import read_passphrase
from gateway.app.gateway import Gateway
from gateway.core import settings as settings_mod
from gateway.core.clock import Clock
from gateway.core.errors import HomeExists
from gateway.core.names import authority_id


def init(home: Home, gateway_id: str, actor: str, clock: Clock | None = None, *,
         protect: bool = False, passphrase_file: str = "") -> Gateway:  # fmt: skip
    """Create a new home: settings, ledger, folders, OpenPGP key, SSH keys; refuse to overwrite.

    With `protect`, every secret key is made with the passphrase the daemon will read
    (the systemd credential, else `passphrase_file`, which goes into gateway.toml).
    """
    authority_id(gateway_id)
    clock = clock or SystemClock()
    if home.settings.exists() or home.ledger.exists() or home.gnupg.exists():
        raise HomeExists(f"{home.root} is already a gateway home; nothing was changed")
    home.check_user()
    chosen: dict[str, int | str] = {"passphrase.file": passphrase_file} if passphrase_file else {}
    settings = settings_mod.parse(
        {"gateway": {"id": gateway_id}, "passphrase": {"file": passphrase_file}}
    )
    given = read_passphrase(settings) if protect else None  # before anything is created
    home.root.mkdir(parents=True, exist_ok=True)
    home.create_folders()
    try:
        keyring = Keyring.create(home.gnupg, settings.gnupg_timeout_seconds, clock)
        try:
            fpr = keyring.generate(gateway_id, settings.gnupg_key_days, given)
        finally:
            keyring.stop_agent()
        ssh_line = sshkeys.generate(home.ssh_identity, f"{gateway_id} gateway", given)
        sshkeys.generate(home.host_key, f"{gateway_id} drop server", given)
        home.known_hosts.touch(mode=0o600)
        Ledger(home.ledger, actor, clock, create=True).close()  # the one place a ledger is made
        # gateway.toml last: its presence is what makes the folder a home.
        text = settings_mod.render(gateway_id, chosen)
        write_atomic(home.settings, text.encode(), mode=0o640)
        gw = Gateway(home, actor, clock)
    except BaseException:
        home.remove_created()
        raise
    gw.ledger.record("init", detail={"gateway_id": gateway_id, "protected": protect,
                                     "ssh_key": sshkeys.fingerprint(ssh_line)})  # fmt: skip
    gw.ledger.add_own_key(fpr, {"by": "init"})
    return gw


def protect(gw: Gateway, reason: str) -> list[str]:
    """Put the configured passphrase on every key of the gateway's that has none yet.

    Every OpenPGP secret key the gateway ever had (old ones still open packages sent to
    them), its SSH identity and the drop server's host key. Holds the work lock, so no
    daemon signs while the keys change; checks afterwards that the passphrase opens
    every key. Returns what it protected (empty: all were already protected).
    """
    with exclusive(gw.home.lock):
        try:
            given = read_passphrase(gw.settings)
            gw.keyring.prepare_protection()
            done: list[str] = []
            for fpr in sorted(gw.ledger.own_keys()):
                if not gw.keyring.protected(fpr):
                    gw.keyring.protect(fpr, given)
                    done.append(f"OpenPGP key {fpr}")
            for path in (gw.home.ssh_identity, gw.home.host_key):
                if not sshkeys.encrypted(path):
                    sshkeys.protect(path, given)
                    done.append(f"SSH key {path.name}")
            gw.__dict__.pop("protected", None)
            gw.unlock()
        finally:
            gw.keyring.stop_agent()  # ours to stop: we hold the work lock
    if done:
        gw.ledger.record("keys.protect", detail={"reason": reason, "protected": done})
    return done


def rotate(gw: Gateway, reason: str) -> KeyInfo:
    """Make a new OpenPGP key for the gateway; it signs from now on.

    The old key stays in the keyring, so packages still addressed to it open. The new key
    is protected by the same passphrase when the keys are protected: one checked first to
    open the current keys, so that a stale passphrase file cannot protect the new one.
    """
    gw.unlock()
    fpr = gw.keyring.generate(gw.settings.gateway_id, gw.settings.gnupg_key_days, gw.passphrase())
    gw.ledger.add_own_key(fpr, {"by": "keys rotate", "reason": reason, "previous": gw.own_key})
    return gw.keyring.key(fpr)
