"""A TCP relay on 127.0.0.1 that breaks the network between the gateway and a real sshd.

Usage::

    with FaultProxy(server.port) as proxy:      # register the partner at proxy.port
        proxy.set(Fault.cut(after=200_000))     # applies to connections accepted from now on
        ...
        proxy.set(Fault.clean())

Faults, each applied to one direction (`UP`: gateway -> server, `DOWN`: server -> gateway)
once `after` bytes have gone through in that direction:

- `refuse`: accept, then reset the connection at once (nothing is ever answered);
- `cut`: forward exactly `after` bytes, then reset both sides (a dropped line; with the
  byte count of a login, "drop after authentication");
- `stall`: with `after=None`, accept and never connect upstream (no banner, ever);
  otherwise forward `after` bytes, then forward nothing more either way (a black hole:
  not even read, so the sender's buffers fill as on a dead route);
- `trickle`: forward at most `rate` bytes per second.

Each connection is one thread running a select loop, so nothing blocks for long: every
wait is at most `TICK` and checks the stop flag. At most `max_connections` are relayed
at once (more are refused), and `stop()` closes every socket and joins every thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Final, Self

HOST: Final = "127.0.0.1"
UP: Final = "up"
DOWN: Final = "down"
TICK: Final = 0.02
MAX_PENDING: Final = 1024 * 1024  # read no further ahead than this per direction
JOIN_SECONDS: Final = 5.0


@dataclasses.dataclass(frozen=True)
class Fault:
    """What the proxy does to the connections it accepts next."""

    kind: str = "clean"
    direction: str = UP
    after: int | None = 0
    rate: float = 0.0

    @classmethod
    def clean(cls) -> Fault:
        """Relay faithfully."""
        return cls()

    @classmethod
    def refuse(cls) -> Fault:
        """Reset each connection as soon as it is accepted."""
        return cls("refuse")

    @classmethod
    def cut(cls, after: int, direction: str = UP) -> Fault:
        """Forward `after` bytes in `direction`, then reset the connection."""
        return cls("cut", direction, after)

    @classmethod
    def stall(cls, after: int | None = None, direction: str = UP) -> Fault:
        """Never answer (`after=None`), or stop forwarding after `after` bytes in `direction`."""
        return cls("stall", direction, after)

    @classmethod
    def trickle(cls, rate: float, direction: str = DOWN, after: int = 0) -> Fault:
        """Slow `direction` to `rate` bytes per second once `after` bytes have passed."""
        return cls("trickle", direction, after, rate)

    def __str__(self) -> str:
        if self.kind in ("clean", "refuse"):
            return self.kind
        if self.kind == "stall" and self.after is None:
            return "stall before the banner"
        rate = f" at {self.rate:g} B/s" if self.kind == "trickle" else ""
        return f"{self.kind} {self.direction}{rate} after {self.after} bytes"


@dataclasses.dataclass
class Connection:
    """What went through one relayed connection."""

    fault: Fault
    sent: dict[str, int] = dataclasses.field(default_factory=lambda: {UP: 0, DOWN: 0})
    outcome: str = "open"  # then: closed, cut, refused, stalled, unreachable, stopped


class FaultProxy:
    """A relay from `port` to `target_port` that injects the current `Fault`."""

    def __init__(self, target_port: int, target_host: str = HOST, max_connections: int = 8) -> None:
        self.target = (target_host, target_port)
        self.max_connections = max_connections
        self.fault = Fault.clean()
        self.connections: list[Connection] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(TICK * 5)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name=f"faultproxy-{self.port}")

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> Self:
        """Start accepting connections."""
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close every connection and the listener; join every thread. Idempotent."""
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the accept loop now, not at its timeout
            self._listener.shutdown(socket.SHUT_RDWR)
        if self._acceptor.is_alive():
            self._acceptor.join(JOIN_SECONDS)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _reset(sock)
        for thread in threads:
            thread.join(JOIN_SECONDS)
        alive = [t.name for t in threads if t.is_alive()]
        assert not alive, f"fault proxy threads did not stop: {alive}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def set(self, fault: Fault) -> None:
        """Apply `fault` to every connection accepted from now on."""
        self.fault = fault

    def release(self) -> None:
        """Reset every open connection (unblocks a client stuck on a stalled one)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _reset(sock)

    def live(self) -> int:
        """Connections still being relayed."""
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    # -- relaying -----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = Connection(self.fault)
            with self._lock:
                self.connections.append(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                busy = len(self._threads) >= self.max_connections
            if busy or conn.fault.kind == "refuse":
                conn.outcome = "refused"
                _reset(client)
                continue
            thread = threading.Thread(
                target=self._relay,
                args=(client, conn),
                name=f"faultproxy-{self.port}-{len(self.connections)}",
            )
            with self._lock:
                self._threads.append(thread)
                self._sockets.add(client)
            thread.start()

    def _relay(self, client: socket.socket, conn: Connection) -> None:
        upstream: socket.socket | None = None
        try:
            if conn.fault.kind == "stall" and conn.fault.after is None:
                conn.outcome = "stalled"
                self._hold(client)
                return
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                conn.outcome = "unreachable"
                return
            with self._lock:
                self._sockets.add(upstream)
            client.setblocking(False)
            upstream.setblocking(False)
            conn.outcome = self._pump(client, upstream, conn)
        except (OSError, ValueError):  # ValueError: a socket release() closed under us
            if conn.outcome == "open":
                conn.outcome = "closed"
        finally:
            with self._lock:
                self._sockets.discard(client)
                if upstream is not None:
                    self._sockets.discard(upstream)
            close = _reset if conn.outcome in ("cut", "stalled") else _close
            for sock in (client, upstream):
                if sock is not None:
                    close(sock)

    def _hold(self, client: socket.socket) -> None:
        """Keep a connection open, answering nothing, until the client leaves or we stop."""
        while not self._stop.is_set():
            readable, _, _ = select.select([client], [], [], TICK)
            if readable and not client.recv(65536):
                return

    def _pump(self, client: socket.socket, upstream: socket.socket, conn: Connection) -> str:
        """Relay both ways under the fault until one side closes; return the outcome."""
        fault = conn.fault
        peer = {UP: upstream, DOWN: client}
        source = {client: UP, upstream: DOWN}
        pending = {UP: bytearray(), DOWN: bytearray()}
        budget, last = 0.0, time.monotonic()
        frozen = closing = False
        while not self._stop.is_set():
            if frozen:  # a black hole: read nothing, send nothing, until released or stopped
                if client.fileno() == -1:
                    return "stalled"  # released
                time.sleep(TICK)
                continue
            wanted = [s for s, d in source.items() if len(pending[d]) < MAX_PENDING]
            readable, _, _ = select.select([] if closing else wanted, [], [], TICK)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    closing = True
                pending[source[sock]] += data
            now = time.monotonic()
            if fault.kind == "trickle":
                budget = min(budget + (now - last) * fault.rate, max(fault.rate, 1.0))
            last = now
            for direction, buffer in pending.items():
                if not buffer:
                    continue
                allowed = len(buffer)
                faulted = direction == fault.direction and fault.kind != "clean"
                if faulted and fault.after is not None:
                    before = fault.after - conn.sent[direction]
                    if before <= 0:  # the fault is on
                        if fault.kind == "cut":
                            return "cut"
                        if fault.kind == "stall":
                            frozen, conn.outcome = True, "stalled"
                            break
                        allowed = int(budget)
                        budget -= allowed
                    else:
                        allowed = min(allowed, before)
                chunk = bytes(buffer[:allowed])
                if chunk and not self._send(peer[direction], chunk):
                    return "stopped"
                del buffer[: len(chunk)]
                conn.sent[direction] += len(chunk)
            if closing and not any(pending.values()):
                return "closed"
        return "stopped"

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        """Send all of `data` unless we are stopped first; say whether it all went."""
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                return False
            _, writable, _ = select.select([], [sock], [], TICK)
            if writable:
                with contextlib.suppress(BlockingIOError):
                    view = view[sock.send(view) :]
        return True


def _close(sock: socket.socket) -> None:
    """Close in the ordinary way (FIN): the other side ended the conversation."""
    with contextlib.suppress(OSError):
        sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a dropped line or a refusing firewall looks to the peer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
