"""The drop server for pull partners: the only module that imports paramiko's server side.

Public-key authentication only, each pull partner with its authority id as user name
and its registered key; a session channel with the SFTP subsystem and nothing else
(no exec, shell, pty or forwarding: paramiko denies them unless allowed). Each
partner sees its own mailbox through `gateway.core.jail`: `/download` read-only, `/upload`
for new files only, which it may read back (a partner may write again or remove its own hidden files, such as
`.<name>.part`, so that an upload cut short can be done again; never a finished file). An upload is written under a hidden name and becomes visible only
after a clean close (pitfall P10: paramiko "closes" the handles of a cut session too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hmac
import logging
import os
import secrets
import socket
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import paramiko
from paramiko import sftp as codes

from gateway.adapters.files import fsync_dir
from gateway.adapters.passphrase import Passphrase
from gateway.adapters.sftp import load_key, modern
from gateway.core.clock import Clock
from gateway.core.jail import Jail, Location, OutsideJail, resolve
from gateway.core.names import is_temporary

log = logging.getLogger("gateway")
INFLIGHT: Final = ".inflight-"
SFTP_OK: Final[int] = codes.SFTP_OK
SFTP_FAILURE: Final[int] = codes.SFTP_FAILURE
SFTP_NO_SUCH_FILE: Final[int] = codes.SFTP_NO_SUCH_FILE
SFTP_PERMISSION_DENIED: Final[int] = codes.SFTP_PERMISSION_DENIED


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one client may cost the host."""

    max_connections: int = 20
    max_auth_attempts: int = 3
    ban_after_failures: int = 10
    ban_seconds: int = 600
    idle_seconds: int = 300
    max_upload_bytes: int = 2 * 1024**3 + 1024**2
    auth_seconds: int = 30  # to log in, from the connection
    max_channels: int = 8  # opened in one connection; an SFTP client needs one
    max_handles: int = 64  # open files and folders per session
    max_read_bytes: int = 261120  # per read request, as OpenSSH's server
    max_sessions_per_partner: int = 4


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What the drop server asks of the rest of the gateway."""

    mailbox: Callable[[str], Path | None]  # the mailbox of a pull partner, None if unknown
    authorized_key: Callable[[str], bytes | None]  # its registered SSH key blob, if enabled
    downloaded: Callable[[str, str], None]  # (partner, name): read whole and closed
    uploaded: Callable[[str, str], None]  # (partner, name): a new file is ready


class DropServer:
    """An SFTP server on `address` for pull partners; `start()`, then `stop()`."""

    def __init__(
        self,
        address: tuple[str, int],
        host_key: Path,
        hooks: Hooks,
        limits: Limits,
        clock: Clock,
        passphrase: Passphrase | None = None,
    ) -> None:
        """`passphrase` decrypts `host_key` when it is protected."""
        self.address = address
        self.clock = clock
        self.host_key = load_key(host_key, passphrase)
        self.hooks = hooks
        self.limits = limits
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._transports: dict[paramiko.Transport, _Server | None] = {}
        self._failures: dict[str, tuple[int, float]] = {}
        #: The hidden files of uploads open now, in every session: the others are leftovers.
        self.inflight: set[Path] = set()

    @property
    def port(self) -> int:
        """The port listened on (useful when asked for port 0)."""
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        """Listen and serve in the background."""
        self._sock = socket.create_server(self.address, reuse_port=False)
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._serve, name="drop-server", daemon=True)
        self._thread.start()
        log.info("drop server listening on %s:%d", self.address[0], self.port)

    def stop(self) -> None:
        """Stop listening and cut every session."""
        self._stop.set()
        if self._sock is not None:
            # Closing alone does not wake an accept() blocked on another thread (Linux):
            # it would wait out its 0.5 s timeout. Shutting the socket down ends it at once.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()
        for transport in transports:
            transport.join(5)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, (address, _) = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as err:  # out of descriptors, say: serve again once some are free
                if self._stop.is_set() or self._sock.fileno() < 0:
                    return
                log.error("drop server: cannot accept a connection (%s); trying again", err)
                self._stop.wait(1.0)
                continue
            try:
                self._accept(conn, address)
            except Exception as err:  # one connection's trouble never ends the accept loop
                log.error("drop server: connection from %s dropped (%r)", address, err)
                conn.close()

    def _accept(self, conn: socket.socket, address: str) -> None:
        """Refuse `conn` if banned or crowded, else start its session on a thread."""
        if self._banned(address):
            log.warning("drop server: %s is banned for failed logins; connection refused", address)
            conn.close()
            return
        with self._lock:
            crowded = len(self._transports) >= self.limits.max_connections
        if crowded:
            log.warning(
                "drop server: %d connections already; %s refused",
                self.limits.max_connections,
                address,
            )
            conn.close()
            return
        transport = paramiko.Transport(conn)
        modern(transport)
        # Before login a client has these to show its banner and finish the key exchange
        # (paramiko's default, 15 s each); then `auth_seconds` in all to log in.
        transport.banner_timeout = transport.handshake_timeout = self.limits.auth_seconds
        with self._lock:
            self._transports[transport] = None
        # The handshake runs on the session's own thread: a client that connects and
        # stays silent must not keep the next one waiting.
        try:
            threading.Thread(target=self._session, args=(transport, address),
                             name="drop-session", daemon=True).start()  # fmt: skip
        except BaseException:
            self._forget(transport)
            transport.close()
            raise

    def _session(self, transport: paramiko.Transport, address: str) -> None:
        """Hand-shake, then close the session once idle for longer than the limit."""
        transport.add_server_key(self.host_key)
        transport.set_subsystem_handler("sftp", _SftpServer, _Mailbox)
        server = _Server(self, address)
        with self._lock:
            self._transports[transport] = server
        connected = self.clock.monotonic()
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, OSError, EOFError) as err:
            log.info("drop server: handshake with %s failed (%s)", address, err)
            transport.close()
            transport.packetizer.complete_handshake()  # paramiko leaves its timer running
            self._forget(transport)
            return
        while transport.is_active() and not self._stop.is_set():
            if why := self._ended(server, connected):
                log.info("drop server: %s %s; closed", server.who, why)
                transport.close()
                break
            self._stop.wait(0.5)  # the session's end and idleness are looked for twice a second
        self._forget(transport)

    def _ended(self, server: _Server, connected: float) -> str | None:
        """Why a session must end now, or None."""
        now = self.clock.monotonic()
        if server.partner is None and now - connected > self.limits.auth_seconds:
            return f"did not log in within {self.limits.auth_seconds} s"
        if now - server.last_activity > self.limits.idle_seconds:
            return f"idle for {self.limits.idle_seconds} s"
        if server.partner is not None and self.hooks.authorized_key(server.partner) is None:
            return "may no longer log in (disabled, or its key changed)"
        return None

    def sessions_of(self, partner: str) -> int:
        """How many sessions `partner` has open now."""
        with self._lock:
            return sum(
                s is not None and s.partner == partner and t.is_active()
                for t, s in self._transports.items()
            )

    def _forget(self, transport: paramiko.Transport) -> None:
        with self._lock:
            self._transports.pop(transport, None)

    def failed_login(self, address: str) -> None:
        """Count a failed login from `address`; ban it for a while past the limit."""
        with self._lock:
            count, _ = self._failures.get(address, (0, 0.0))
            count += 1
            until = (
                self.clock.monotonic() + self.limits.ban_seconds
                if count >= self.limits.ban_after_failures
                else 0.0
            )
            self._failures[address] = (count, until)
        if until:
            log.warning(
                "drop server: %s banned for %d s after %d failed logins",
                address,
                self.limits.ban_seconds,
                count,
            )

    def _banned(self, address: str) -> bool:
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
            if until and until < self.clock.monotonic():
                del self._failures[address]
                return False
            return bool(until)


class _Server(paramiko.ServerInterface):  # type: ignore[misc]
    """Authentication and channel policy for one connection."""

    def __init__(self, drop: DropServer, address: str) -> None:
        self.drop = drop
        self.address = address
        self.partner: str | None = None
        self.candidate: str | None = None
        self.keys_tried: set[bytes] = set()
        self.channels = 0
        self.last_activity = drop.clock.monotonic()

    @property
    def who(self) -> str:
        return f"{self.partner or 'unauthenticated'}@{self.address}"

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        # paramiko asks twice per key (is it acceptable? then, signed, does it match?):
        # count keys, not questions. Success here proves nothing until the signature is
        # checked, so the partner is named only when it opens a channel (after login).
        self.keys_tried.add(key.asbytes())
        if len(self.keys_tried) > self.drop.limits.max_auth_attempts:
            log.warning(
                "drop server: %s tried more than %d keys",
                self.address,
                self.drop.limits.max_auth_attempts,
            )
            return paramiko.AUTH_FAILED
        expected = self.drop.hooks.authorized_key(username)
        if expected is not None and hmac.compare_digest(key.asbytes(), expected):
            self.candidate = username
            return paramiko.AUTH_SUCCESSFUL
        self.drop.failed_login(self.address)
        log.warning("drop server: login refused for %r from %s", username[:64], self.address)
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        # paramiko asks this only of an authenticated connection.
        if kind != "session" or self.candidate is None:
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.channels += 1
        limits = self.drop.limits
        if self.channels > limits.max_channels:
            log.warning(
                "drop server: %s asked for more than %d channels", self.who, limits.max_channels
            )
            return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
        if self.partner is None:
            if self.drop.sessions_of(self.candidate) >= limits.max_sessions_per_partner:
                log.warning("drop server: %s already has %d sessions; refused", self.candidate,
                            limits.max_sessions_per_partner)  # fmt: skip
                return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
            self.partner = self.candidate
            log.info("drop server: %s logged in", self.who)
        return paramiko.OPEN_SUCCEEDED


class _SftpServer(paramiko.SFTPServer):  # type: ignore[misc]
    """paramiko's SFTP server, with a bound on open handles and no extension the gateway
    does not implement (paramiko's stock `check-file` kept a CPU busy after one request)."""

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        if t in (codes.CMD_OPEN, codes.CMD_OPENDIR):
            limit = self.server.limits.max_handles
            if len(self.file_table) + len(self.folder_table) >= limit:
                self._send_status(request_number, SFTP_FAILURE, f"more than {limit} open handles")
                return
        elif t == codes.CMD_EXTENDED:
            self._send_status(request_number, codes.SFTP_OP_UNSUPPORTED)
            return
        super()._process(t, request_number, msg)

    def _send_server_version(self) -> int:
        """Version 3 with no extension advertised (paramiko's advertises `check-file`)."""
        kind, data = self._read_packet()
        if kind != codes.CMD_INIT:
            raise paramiko.SFTPError("Incompatible sftp protocol")
        message = paramiko.Message()
        message.add_int(3)
        self._send_packet(codes.CMD_VERSION, message)
        return int(struct.unpack(">I", data[:4])[0])


class _Download(paramiko.SFTPHandle):  # type: ignore[misc]
    """A file in /download, open for reading; notes whether it was read to the end."""

    def __init__(self, mailbox: _Mailbox, name: str, fd: int, report: bool) -> None:
        super().__init__(os.O_RDONLY)
        self.mailbox, self.name, self.report = mailbox, name, report
        self.readfile = os.fdopen(fd, "rb")
        self.size = os.fstat(fd).st_size
        self.ranges: list[tuple[int, int]] = []  # bytes read so far, merged

    def read(self, offset: int, length: int) -> bytes | int:
        # A short read is allowed: a client asks again for the rest. One 2 GiB request
        # answered whole would hold the whole file in memory.
        data = super().read(offset, min(length, self.mailbox.limits.max_read_bytes))
        if isinstance(data, bytes) and data:
            self.ranges = _merge([*self.ranges, (offset, offset + len(data))])
        self.mailbox.touch()
        return data

    def stat(self) -> paramiko.SFTPAttributes:
        return _attributes(os.fstat(self.readfile.fileno()), self.name)

    def close(self) -> None:
        super().close()
        if self.report and self.ranges == [(0, self.size)] and not self.mailbox.ended:
            self.mailbox.read_whole.add(self.name)
            self.mailbox.hooks.downloaded(self.mailbox.partner, self.name)


class _Upload(paramiko.SFTPHandle):  # type: ignore[misc]
    """A new file in /upload: written under a hidden name, renamed into place on a clean close."""

    def __init__(self, mailbox: _Mailbox, final: Path, fd: int, inflight: Path) -> None:
        super().__init__(os.O_WRONLY)
        self.mailbox, self.final, self.inflight = mailbox, final, inflight
        self.writefile = os.fdopen(fd, "wb")
        self.written = 0
        self.refused = False

    def write(self, offset: int, data: bytes) -> int:
        self.mailbox.touch()
        self.written = max(self.written, offset + len(data))
        if self.written > self.mailbox.limits.max_upload_bytes:
            self.refused = True
            log.warning("drop server: %s upload over %d bytes refused", self.mailbox.partner,
                        self.mailbox.limits.max_upload_bytes)  # fmt: skip
            return SFTP_PERMISSION_DENIED
        return int(super().write(offset, data))

    def stat(self) -> paramiko.SFTPAttributes:
        return _attributes(os.fstat(self.writefile.fileno()), self.final.name)

    def close(self) -> None:
        try:
            self._close()
        finally:
            with self.mailbox.server.drop._lock:
                self.mailbox.server.drop.inflight.discard(self.inflight)

    def _close(self) -> None:
        if self.mailbox.ended or self.refused:  # cut off, or too large: never a file
            self.writefile.close()
            self.inflight.unlink(missing_ok=True)
            # Raised only to the client that is still there: paramiko closes every handle
            # of a session that ended in one loop, which an exception would cut short.
            if self.refused and not self.mailbox.ended:
                raise OSError(errno.EFBIG, "upload over the size limit")
            return
        try:
            self.writefile.flush()
            os.fsync(self.writefile.fileno())
            self.writefile.close()
            if _hidden(self.final.name):  # the partner's own unfinished file: redone
                os.replace(self.inflight, self.final)
            else:
                os.link(self.inflight, self.final)  # never replaces a finished file
        finally:
            self.inflight.unlink(missing_ok=True)
        fsync_dir(self.final.parent)
        if not is_temporary(self.final.name):
            self.mailbox.hooks.uploaded(self.mailbox.partner, self.final.name)


def _hidden(name: str) -> bool:
    """A hidden name in /upload: the partner's own unfinished file (e.g. `.<name>.part`),
    which it may write again or remove; never taken in, never a finished file."""
    return name.startswith(".") and not name.startswith(INFLIGHT)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping or touching [start, end) ranges."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _attributes(st: os.stat_result, name: str) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes.from_stat(st, name)
    attrs.st_uid = attrs.st_gid = 0  # the host's user ids are none of the partner's business
    return attrs


def _folder(name: str, now: float) -> paramiko.SFTPAttributes:
    attrs = paramiko.SFTPAttributes()
    attrs.filename, attrs.st_mode, attrs.st_size = name, stat.S_IFDIR | 0o500, 0
    attrs.st_uid = attrs.st_gid = 0
    attrs.st_atime = attrs.st_mtime = int(now)
    return attrs


class _Mailbox(paramiko.SFTPServerInterface):  # type: ignore[misc]
    """One authenticated partner's view of its mailbox."""

    def __init__(self, server: _Server, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.server = server
        self.partner = str(server.partner)
        self.hooks = server.drop.hooks
        self.limits = server.drop.limits
        self.clock = server.drop.clock
        root = self.hooks.mailbox(self.partner)
        assert root is not None, "only a pull partner can log in"
        self.jail = Jail(root)
        self.ended = False
        self.read_whole: set[str] = set()
        self._sweep(root / "upload")

    def _sweep(self, upload: Path) -> None:
        """Remove hidden upload files that no open upload owns: a server that died left them."""
        drop = self.server.drop
        with drop._lock:
            for leftover in set(upload.glob(f"{INFLIGHT}*")) - drop.inflight:
                leftover.unlink(missing_ok=True)

    def touch(self) -> None:
        self.server.last_activity = self.server.drop.clock.monotonic()

    def session_ended(self) -> None:
        self.ended = True

    def _locate(self, path: str) -> Location:
        self.touch()
        return resolve(path)

    def _file(self, path: str) -> tuple[Location, str] | None:
        """The file a client path names, and its name, if the partner may name it: inside
        its jail, not a folder, not an upload in flight."""
        try:
            where = self._locate(path)
        except OutsideJail:
            return None
        if where.name is None or where.name.startswith(INFLIGHT):
            return None
        return where, where.name

    def canonicalize(self, path: str) -> str:
        try:
            return self._locate(path).path
        except OutsideJail:
            return "/"

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        try:
            where = self._locate(path)
        except OutsideJail:
            return SFTP_NO_SUCH_FILE
        if where.area == "root":
            return [_folder("download", self.clock.now()), _folder("upload", self.clock.now())]
        if where.name is not None:
            return SFTP_NO_SUCH_FILE
        folder = self.jail.host_path(where)
        found = []
        for entry in os.scandir(folder):
            if entry.name.startswith(INFLIGHT) or not entry.is_file(follow_symlinks=False):
                continue
            found.append(_attributes(entry.stat(follow_symlinks=False), entry.name))
        return found

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            where = self._locate(path)
        except OutsideJail:
            return SFTP_NO_SUCH_FILE
        if where.name is None:
            return _folder(where.area, self.clock.now())
        try:
            st = os.lstat(self.jail.host_path(where))
        except FileNotFoundError:
            return SFTP_NO_SUCH_FILE
        if not stat.S_ISREG(st.st_mode) or where.name.startswith(INFLIGHT):
            return SFTP_NO_SUCH_FILE
        return _attributes(st, where.name)

    lstat = stat

    def open(
        self, path: str, flags: int, attr: paramiko.SFTPAttributes
    ) -> paramiko.SFTPHandle | int:
        if (file := self._file(path)) is None:
            return SFTP_PERMISSION_DENIED
        where, name = file
        host = self.jail.host_path(where)
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if writing and where.area == "download":
            return SFTP_PERMISSION_DENIED
        if not writing:  # from /download, or its own uploads read back
            try:
                fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as err:
                return paramiko.SFTPServer.convert_errno(err.errno)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return SFTP_PERMISSION_DENIED
            return _Download(self, name, fd, report=where.area == "download")
        if not (flags & os.O_WRONLY) or flags & os.O_APPEND:
            return SFTP_PERMISSION_DENIED
        if os.path.lexists(host) and not _hidden(name):
            return SFTP_PERMISSION_DENIED  # new files only; a hidden unfinished one may be redone
        inflight = host.with_name(f"{INFLIGHT}{secrets.token_hex(8)}")
        fd = os.open(inflight, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with self.server.drop._lock:
            self.server.drop.inflight.add(inflight)
        return _Upload(self, host, fd, inflight)

    def remove(self, path: str) -> int:
        if (file := self._file(path)) is None:
            return SFTP_PERMISSION_DENIED
        where, name = file
        if where.area == "download" and name not in self.read_whole:
            return SFTP_PERMISSION_DENIED  # only what the partner has read, from /download
        if where.area == "upload" and not _hidden(name):
            return SFTP_PERMISSION_DENIED  # only its own unfinished files, from /upload
        try:
            os.unlink(self.jail.host_path(where))
        except FileNotFoundError:
            return SFTP_NO_SUCH_FILE
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        try:
            old, new = self._locate(oldpath), self._locate(newpath)
        except OutsideJail:
            return SFTP_PERMISSION_DENIED
        if old.area != "upload" or new.area != "upload" or not old.name or not new.name:
            return SFTP_PERMISSION_DENIED
        if old.name.startswith(INFLIGHT) or new.name.startswith(INFLIGHT):
            return SFTP_PERMISSION_DENIED
        source, target = self.jail.host_path(old), self.jail.host_path(new)
        try:
            if not stat.S_ISREG(os.lstat(source).st_mode):
                return SFTP_PERMISSION_DENIED
            os.link(source, target)  # fails if the target exists: no rename over a file
        except FileExistsError:
            return SFTP_FAILURE
        except OSError as err:
            return paramiko.SFTPServer.convert_errno(err.errno if err.errno else errno.EIO)
        os.unlink(source)
        if not is_temporary(new.name):
            self.hooks.uploaded(self.partner, new.name)
        return SFTP_OK

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return SFTP_PERMISSION_DENIED  # it would replace an existing file

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return SFTP_PERMISSION_DENIED

    def rmdir(self, path: str) -> int:
        return SFTP_PERMISSION_DENIED

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        # Times are accepted and ignored (rclone and others set them after an upload and
        # count a refusal as a failed upload); permissions, owners and sizes are refused.
        if self._file(path) is None or attr._flags & ~paramiko.SFTPAttributes.FLAG_AMTIME:
            return SFTP_PERMISSION_DENIED
        return SFTP_OK

    def symlink(self, target_path: str, path: str) -> int:
        return SFTP_PERMISSION_DENIED

    def readlink(self, path: str) -> str | int:
        return SFTP_PERMISSION_DENIED
