"""systemd's service notification protocol (sd_notify(3)), spoken without libsystemd.

Each notice is one datagram of `KEY=VALUE` lines sent to the socket systemd names in
`$NOTIFY_SOCKET`: a file path, or an abstract socket written with a leading `@`. With
`Type=notify` the unit becomes active only when READY=1 arrives, `systemctl status`
shows the last STATUS=, and with `WatchdogSec=` systemd kills and restarts the service
when no WATCHDOG=1 arrives within `$WATCHDOG_USEC`. Outside systemd every call does
nothing. The protocol is a dozen lines: a dependency (sdnotify, cysystemd) would add a
package to keep up to date for no gain.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

from gateway.core.clock import Clock

log = logging.getLogger("gateway")


class Notifier:
    """Tells systemd how the service is doing; does nothing when not run by systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None, clock: Clock) -> None:
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        self.clock = clock
        #: Pings go out at half the interval systemd waits, as sd_watchdog_enabled(3) advises.
        self.watchdog_seconds = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_ping = float("-inf")
        self._last_status = ""
        self._warned = False

    @classmethod
    def from_environment(cls, clock: Clock, environ: MutableMapping[str, str] = os.environ) -> Notifier:  # fmt: skip
        """The notifier systemd asked for in the environment, which is then cleared of it:
        gpg, gpg-agent and ssh started later must not speak for the service."""
        address = environ.pop("NOTIFY_SOCKET", None) or None
        usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        mine = not pid or (pid.isdigit() and int(pid) == os.getpid())
        return cls(address, int(usec) if usec.isdigit() and mine else None, clock)

    def send(self, *lines: str) -> None:
        """Send one notice; a failure is logged once and otherwise ignored (without pings,
        systemd's watchdog then restarts the service, which is the right outcome)."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as err:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), err)
                self._warned = True

    def ready(self, status: str) -> None:
        """The service is serving."""
        self._last_status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """Settings are being read again; `ready` follows when done."""
        usec = int(self.clock.monotonic() * 1e6)  # CLOCK_MONOTONIC, as systemd 253+ wants
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading gateway.toml")

    def stopping(self) -> None:
        """The service is shutting down."""
        self.send("STOPPING=1", "STATUS=stopping: finishing the steps in hand")

    def alive(self, status: str) -> None:
        """Called at each turn of the main loop: feed the watchdog when half its interval
        has passed, and update the status line when it changed."""
        lines = []
        if status != self._last_status:
            self._last_status = status
            lines.append(f"STATUS={status}")
        now = self.clock.monotonic()
        if self.watchdog_seconds is not None and now - self._last_ping >= self.watchdog_seconds:
            self._last_ping = now
            lines.append("WATCHDOG=1")
        if lines:
            self.send(*lines)
