"""Push delivery over SFTP: the only module that imports the paramiko client.

A session logs in with the gateway's own key only (no agent, no ~/.ssh: pitfall P3),
accepts only the host key pinned for that partner (P1), bounds every step in time
(P4), and uploads under a temporary dot-name renamed into place when complete (P6, P7).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import secrets
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, TypeAlias, TypeVar

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_STAT,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    int64,
)

from gateway.adapters.files import publish, write_atomic
from gateway.adapters.passphrase import Passphrase
from gateway.adapters.sshkeys import known_hosts_name
from gateway.core.errors import (
    GatewayError,
    HostKeyMismatch,
    KeyProblem,
    PassphraseMissing,
    PassphraseWrong,
    RemoteConflict,
    TransferFailed,
    Transient,
)
from gateway.core.model import Arrival, Outgoing, Placed, Wanted

CHUNK: Final = 1024 * 1024
#: paramiko's largest read request; a file this small takes one round trip unaided.
READ_AHEAD_FROM: Final = 32 * 1024
# Bytes per SFTP write request. paramiko sends 32 KiB, which every server takes; a 32 KiB
# write plus its SFTP header does not fit a 32 KiB SSH channel packet, so each write goes
# as two packets, and paramiko's cost is per packet (lock hand-offs, send, HMAC). OpenSSH
# says in its `limits@openssh.com` reply that it takes 261120-byte writes. With those,
# put_atomic of 512 MiB to OpenSSH on loopback (2-core test machine, bench.run scenario
# 2, five runs) went from 64-70 to 108-118 MiB/s, from 0.44-0.50 to 0.74-0.84 of
# OpenSSH's own sftp, and the client's CPU from 8.6 to 5.1 ms per MiB (sftp: 3.8);
# docs/performance.md. Larger writes are not asked for even if a server allows them
# (research/measured-limits.md section a saw nothing faster), and a server that does not
# say what it takes gets 32 KiB.
FALLBACK_WRITE_BYTES: Final = 32 * 1024
MAX_WRITE_BYTES: Final = 261120
#: Files up to this size go up or come down together, TOGETHER at a time (`put_all`,
#: `fetch_all`).
SMALL: Final = 64 * 1024
TOGETHER: Final = 16
# Host key algorithms to offer for each pinned key type, so the server shows the key
# that was pinned rather than another of its keys.
_ALGORITHMS: Final = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}

#: Algorithms offered, AEAD first (256 MiB uploads on this kind of machine, alternating:
#: 4.8-6.4 ms of client CPU per MiB with aes256-gcm, 5.9-8.3 with aes128-ctr and
#: hmac-sha2-256); no CBC, no 3DES, no SHA-1 or MD5 MAC. The drop server offers the same.
CIPHERS: Final = ("aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr",
                  "aes192-ctr", "aes128-ctr")  # fmt: skip
MACS: Final = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256",
               "hmac-sha2-512")  # fmt: skip


#: What `partner set --ssh-algorithms legacy` adds, after CIPHERS and MACS, for a partner
#: whose old server offers nothing better; never 3DES, never MD5.
LEGACY_CIPHERS: Final = ("aes256-cbc", "aes128-cbc")
LEGACY_MACS: Final = ("hmac-sha1",)


def modern(transport: paramiko.Transport, legacy: bool = False) -> None:
    """Offer only CIPHERS and MACS (those of them this paramiko has), in that order; with
    `legacy`, then LEGACY_CIPHERS and LEGACY_MACS."""
    options = transport.get_security_options()
    ciphers, macs = (CIPHERS + LEGACY_CIPHERS, MACS + LEGACY_MACS) if legacy else (CIPHERS, MACS)
    options.ciphers = tuple(c for c in ciphers if c in options.ciphers)
    options.digests = tuple(m for m in macs if m in options.digests)


#: What a broken, refused or timed-out network step raises: paramiko's own errors, an SFTP
#: error status (IOError), a protocol reply it did not expect, or a connection cut (EOF).
_NETWORK_ERRORS: Final = (paramiko.SSHException, paramiko.SFTPError, OSError, EOFError)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """The edge of this adapter: a network error inside becomes `TransferFailed` saying
    "WHAT failed (why); will retry", with nothing of the error but a short reason."""
    try:
        yield
    except _NETWORK_ERRORS as err:
        raise TransferFailed(f"{what} failed ({_why(err)}); will retry") from None


#: What one item of a batch (`SftpPartner._batched`) gives when done.
R = TypeVar("R")

#: A private key, loaded: the gateway's SSH identity, or the drop server's host key.
Identity: TypeAlias = paramiko.PKey


def load_key(path: Path, passphrase: Passphrase | None) -> Identity:
    """The Ed25519 private key at `path`, decrypted with `passphrase` if it is protected.

    Loaded once per process, not per connection: an encrypted key's bcrypt KDF took
    0.11 s per load here.
    """
    try:
        key: Identity = paramiko.Ed25519Key.from_private_key_file(
            str(path), password=passphrase.reveal() if passphrase else None
        )
        return key
    except paramiko.PasswordRequiredException:
        raise PassphraseMissing(
            f"the SSH key {path} is protected by a passphrase and none was given: see "
            "`gateway doctor`, and give it as the operator guide says"
        ) from None
    except (paramiko.SSHException, ValueError):
        if passphrase is not None:
            raise PassphraseWrong(
                f"the passphrase given does not open the SSH key {path}: give the one the "
                "keys were protected with"
            ) from None
        raise KeyProblem(
            f"{path} is not an Ed25519 private key: restore keys/ssh from backup"
        ) from None
    except OSError as err:
        raise KeyProblem(f"the SSH key {path} cannot be read ({err.strerror}): restore keys/ssh "
                         "from backup, and check its owner") from None  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where and as whom the gateway logs in to a push partner."""

    host: str
    port: int
    user: str
    upload_dir: str
    download_dir: str
    legacy: bool = False  # its old server needs LEGACY_CIPHERS or LEGACY_MACS


class SftpPartner:
    """One SFTP session with a push partner, reused for a batch of packages."""

    def __init__(
        self,
        endpoint: Endpoint,
        identity: paramiko.PKey,
        known_hosts: Path,
        connect_timeout: float,
        io_timeout: float,
    ) -> None:
        self.endpoint = endpoint
        self._identity = identity
        self._known_hosts = known_hosts
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._transport: paramiko.Transport | None = None
        self._sftp: _Client | None = None
        self._write_bytes: int | None = None  # asked of the server at the first upload
        self._parts: dict[str, str] = {}  # final name: the part opened for it

    def __enter__(self) -> SftpPartner:
        return self.open()

    def open(self) -> SftpPartner:
        """Connect, log in and start SFTP; on any failure nothing stays open."""
        try:
            self._connect()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def closed(self) -> bool:
        """Whether the session was closed (or never opened)."""
        return self._transport is None

    def reusable(self, endpoint: Endpoint) -> bool:
        """Whether this open session may serve `endpoint` now: the same endpoint, still
        connected, and the server's key still the one pinned (it may have been re-pinned)."""
        t = self._transport
        if endpoint != self.endpoint or t is None or not t.is_active() or t.host_key is None:
            return False
        e = self.endpoint
        pinned = paramiko.HostKeys(str(self._known_hosts)).lookup(known_hosts_name(e.host, e.port))
        return pinned is not None and pinned.get(t.host_key.get_name()) == t.host_key

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the session and its connection; one the network broke, quietly."""
        if self._sftp is not None:
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                self._sftp.close()
        if self._transport is not None:
            self._transport.close()
            self._transport.packetizer.complete_handshake()  # a failed one's timer runs on
        self._sftp = self._transport = None
        self._write_bytes = None

    @property
    def _name(self) -> str:
        e = self.endpoint
        return f"{e.user}@{e.host}:{e.port}"

    def _connect(self) -> None:
        e = self.endpoint
        pinned = paramiko.HostKeys(str(self._known_hosts)).lookup(known_hosts_name(e.host, e.port))
        if not pinned:
            raise HostKeyMismatch(
                f"no SSH host key is pinned for {e.host}:{e.port}: pin it with `gateway partner add`"
            )
        with _translated(f"connecting to {self._name}"):
            sock = socket.create_connection((e.host, e.port), timeout=self._connect_timeout)
        self._transport = t = paramiko.Transport(sock)
        t.banner_timeout = t.handshake_timeout = t.auth_timeout = self._connect_timeout
        modern(t, e.legacy)
        t.get_security_options().key_types = [
            alg for kind in pinned for alg in _ALGORITHMS.get(kind, [kind])
        ]
        with _translated(f"SSH with {self._name}"):
            try:
                t.start_client(timeout=self._connect_timeout)
            except paramiko.IncompatiblePeer as err:
                raise TransferFailed(
                    f"{self._name} offers no cipher, MAC or key exchange the gateway accepts "
                    f"({_why(err)}): ask the partner to upgrade its server, or let the gateway "
                    f"offer it AES-CBC and HMAC-SHA1 with `gateway partner set ID "
                    "--ssh-algorithms legacy`; will retry"
                ) from None
            if not t.is_active() or t.host_key is None:  # paramiko's start_client gives up silently
                raise TransferFailed(
                    f"SSH with {self._name} timed out: no handshake within {self._connect_timeout:.0f} s; will retry"
                )
            shown = t.get_remote_server_key()
            if pinned.get(shown.get_name()) != shown:
                raise HostKeyMismatch(
                    f"{e.host}:{e.port} showed an SSH host key that is not the one pinned "
                    f"({shown.get_name()} {shown.fingerprint}); nothing was sent. Confirm the "
                    "partner's new key by phone before pinning it"
                )
            try:
                t.auth_publickey(e.user, self._identity)
            except paramiko.AuthenticationException:
                raise TransferFailed(
                    f"{self._name} refused the gateway's SSH key: send the partner "
                    "`gateway keys export --ssh`; will retry"
                ) from None
            self._sftp = _Client.from_transport(t)
            assert self._sftp is not None
            self._sftp.get_channel().settimeout(self._io_timeout)
            t.set_keepalive(15)

    @property
    def sftp(self) -> _Client:
        """The open SFTP session."""
        if self._sftp is None:
            raise TransferFailed(f"the session with {self._name} is closed; will retry")
        return self._sftp

    def put_atomic(self, local: Path, name: str, sha256: str) -> Placed:
        """Upload `local` as `<upload_dir>/<name>`, complete or not at all.

        Idempotent: if the target is already there with the same content (a delivery
        cut off after the rename), nothing is sent again; if it is there with other
        content, nothing is overwritten and `RemoteConflict` says so. The target is looked
        for first, at a round trip per file, although `place` would find it when its rename
        is refused: some servers' rename replaces an existing file (SFTPv3 says it must
        not), and a package sealed again (after a restore) must never replace the one the
        partner already has.
        """
        final, size = self._upload_path(name), local.stat().st_size
        with _translated(f"upload of {name} to {self._name}"):
            if self._exists(final):
                return self._compare(final, sha256)
        with self.open_part(name) as part:
            with _translated(f"reading {local}"), local.open("rb") as src:
                while chunk := src.read(part.block):
                    part.write(chunk)
            part.close()
        return self.place(name, size, sha256)

    def put_all(self, files: list[Outgoing]) -> list[Placed | GatewayError]:
        """Upload each file as `put_atomic` does; each one's outcome, in order: where it
        was placed, or the error that kept it back. Once the session breaks, its error is
        the outcome of every file not yet placed.

        Small files go TOGETHER at a time, each step's requests for all of them in flight
        at once (look for the target, open the part, write and close it, check its size,
        rename it). One by one, waiting for each answer, a 4 KiB upload to OpenSSH cost
        0.45 ms of CPU and 0.75 ms here; together 0.13 ms and 0.13 ms. A file whose step
        does not go plainly (its target is there, the server refuses its part) is left to
        `put_atomic`, as are larger files.
        """
        small = [i for i, f in enumerate(files) if f.local.stat().st_size <= SMALL]
        return self._batched(
            len(files), small, f"upload to {self._name}",
            lambda batch: self._together([files[i] for i in batch]),
            lambda i: self.put_atomic(files[i].local, files[i].name, files[i].sha256),
        )  # fmt: skip

    def _batched(self, count: int, small: list[int], what: str,
                 together: Callable[[list[int]], list[R | None]],
                 alone: Callable[[int], R]) -> list[R | GatewayError]:  # fmt: skip
        """Each of `count` items' outcome, in order: the `small` ones TOGETHER at a time by
        `together` (None: left to `alone`), the others by `alone`, one at a time. Once a
        transient failure is met (the session's, most likely), it is the outcome of every
        item not yet done; any other error is its item's alone."""
        outcomes: dict[int, R | GatewayError] = {}
        trouble: Transient | None = None
        for start in range(0, len(small), TOGETHER):
            batch = small[start : start + TOGETHER]
            try:
                with _translated(what):
                    done = together(batch)
            except Transient as err:
                trouble = err
                break
            outcomes.update((i, r) for i, r in zip(batch, done, strict=True) if r is not None)
        for i in range(count):
            if i in outcomes:
                continue
            if trouble is None:
                try:
                    outcomes[i] = alone(i)
                    continue
                except Transient as err:
                    trouble = err
                except GatewayError as err:
                    outcomes[i] = err
                    continue
            outcomes[i] = trouble
        return [outcomes[i] for i in range(count)]

    def _together(self, files: list[Outgoing]) -> list[Placed | None]:
        """The plain way of `put_all` for small `files`, each step for all at once; None for
        a file it left to `put_atomic`."""
        final = [self._upload_path(f.name) for f in files]
        part = [self._upload_path(f".{f.name}.part") for f in files]
        go = [
            kind == CMD_STATUS and msg.get_int() == SFTP_NO_SUCH_FILE
            for kind, msg in self._ask([(CMD_STAT, path) for path in final])
        ]
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC
        opened = self._ask([(CMD_OPEN, part[i], flags, paramiko.SFTPAttributes())
                            for i in range(len(files)) if go[i]])  # fmt: skip
        handles = iter(opened)
        handle: dict[int, bytes] = {}
        for i in range(len(files)):
            if go[i] and (answer := next(handles))[0] == CMD_HANDLE:
                handle[i] = answer[1].get_binary()
            else:
                go[i] = False
        size: dict[int, int] = {}
        writes: list[tuple[int, tuple[object, ...]]] = []
        block = self.write_bytes()
        for i, h in handle.items():
            data = files[i].local.read_bytes()
            size[i] = len(data)
            writes += [(i, (CMD_WRITE, h, int64(at), data[at : at + block]))
                       for at in range(0, len(data), block)]  # fmt: skip
            writes.append((i, (CMD_CLOSE, h)))
        for (i, _), (kind, msg) in zip(writes, self._ask([w for _, w in writes]), strict=True):
            if not _ok(kind, msg):
                go[i] = False
        checked = [i for i in handle if go[i]]
        for i, (kind, msg) in zip(checked, self._ask([(CMD_STAT, part[i]) for i in checked]),
                                  strict=True):  # fmt: skip
            if kind != CMD_ATTRS or paramiko.SFTPAttributes._from_msg(msg).st_size != size[i]:
                go[i] = False
        placed: list[Placed | None] = [None] * len(files)
        renamed = [i for i in checked if go[i]]
        for i, (kind, msg) in zip(renamed, self._ask([(CMD_RENAME, part[i], final[i])
                                                      for i in renamed]), strict=True):  # fmt: skip
            if _ok(kind, msg):
                placed[i] = Placed(final[i], already_there=False)
        return placed

    def _ask(self, requests: list[tuple[object, ...]]) -> list[tuple[int, paramiko.Message]]:
        """Send every request (`(CMD, *args)`) at once, then read the answers as they come, in
        whatever order the server sends them; each one's answer, in order. A server that
        keeps answering requests nobody made is cut off (each read waits the I/O timeout
        at most, and there are at most twice as many reads as requests)."""
        answers = _Answers()
        numbers = self.sftp.send_together(answers, requests)
        for _ in range(2 * len(numbers)):
            if len(answers.got) == len(numbers):
                break
            self.sftp._read_response()  # one answer, handed to the `_Answers` that asked
        if len(answers.got) < len(numbers):
            raise paramiko.SFTPError("the server answered requests that were not made")
        return [answers.got[number] for number in numbers]

    def open_part(self, name: str) -> RemotePart:
        """Open `<upload_dir>/.<name>.part` for writing, emptied; `place` it once it is whole.

        A server may refuse to write that part again (one an upload cut short left, on a
        server that takes new files only): the part is removed if the server allows it,
        else a fresh `.<name>.<random>.part` is used.
        """
        with _translated(f"upload of {name} to {self._name}"):
            request = self.write_bytes()
            handle = self._open_part(name)
        handle.MAX_REQUEST_SIZE = request  # this file only, not paramiko's class default
        handle.set_pipelined(True)
        return RemotePart(handle, request, f"upload of {name} to {self._name}")

    def _open_part(self, name: str) -> paramiko.SFTPFile:
        tmp = self._upload_path(f".{name}.part")
        try:
            handle = self.sftp.open(tmp, "wb")
        except PermissionError:
            self._remove_quietly(tmp)
            try:
                handle = self.sftp.open(tmp, "wb")
            except PermissionError:
                tmp = self._upload_path(f".{name}.{secrets.token_hex(4)}.part")
                handle = self.sftp.open(tmp, "wb")
        self._parts[name] = tmp
        return handle

    def place(self, name: str, size: int, sha256: str) -> Placed:
        """Rename a whole `.<name>.part` of `size` bytes into place as `<upload_dir>/<name>`.

        If `<name>` is there already (a delivery cut off after its rename), it must hold
        the same bytes: then the part is removed and the upload counts as done.
        """
        final = self._upload_path(name)
        tmp = self._parts.pop(name, self._upload_path(f".{name}.part"))
        with _translated(f"upload of {name} to {self._name}"):
            uploaded = self.sftp.stat(tmp).st_size
            if uploaded != size:
                raise TransferFailed(
                    f"{self._name} holds {uploaded} of {size} bytes of {name}; will retry"
                )
            try:
                # SFTPv3 rename never replaces an existing file: exactly what we want.
                self.sftp.rename(tmp, final)
            except OSError:
                if not self._exists(final):
                    raise
                self._remove_quietly(tmp)
                return self._compare(final, sha256)
        return Placed(final, already_there=False)

    def _upload_path(self, name: str) -> str:
        return f"{_folder(self.endpoint.upload_dir)}/{name}"

    def write_bytes(self) -> int:
        """Bytes per write request for this session (asked of the server once)."""
        if self._write_bytes is None:
            self._write_bytes = self._ask_write_limit()
        return self._write_bytes

    def _ask_write_limit(self) -> int:
        """The server's `limits@openssh.com` max-write, capped at MAX_WRITE_BYTES; else 32 KiB.

        An SFTPv3 server answers an extension it does not know with "unsupported", which
        paramiko raises as a plain IOError: that server gets FALLBACK_WRITE_BYTES.
        """
        try:
            kind, reply = self.sftp._request(CMD_EXTENDED, "limits@openssh.com")
        except TimeoutError:
            raise
        except OSError:
            return FALLBACK_WRITE_BYTES
        if kind != CMD_EXTENDED_REPLY:
            return FALLBACK_WRITE_BYTES
        # max-packet-length, max-read-length, max-write-length, max-open-handles
        max_write = int([reply.get_int64() for _ in range(4)][2])
        # 0: the server states no limit, which says nothing of what it takes.
        return min(max_write, MAX_WRITE_BYTES) if max_write > 0 else FALLBACK_WRITE_BYTES

    def list_download(self) -> list[Arrival]:
        """The regular files in the partner's download folder whose names are UTF-8.

        paramiko's own listing decodes every name strictly, so one name that is not UTF-8
        would stop the partner's whole folder from being read; this reads names as bytes
        and leaves such a name out (it is no name of the contract anyway).
        """
        folder = _folder(self.endpoint.download_dir)
        found: list[Arrival] = []
        with _translated(f"listing {folder} on {self._name}"):
            _, msg = self.sftp._request(CMD_OPENDIR, folder)
            handle = msg.get_binary()
            while True:
                try:
                    _, msg = self.sftp._request(CMD_READDIR, handle)
                except EOFError:
                    break
                for _ in range(msg.get_int()):
                    raw, _longname = msg.get_string(), msg.get_string()
                    attrs = paramiko.SFTPAttributes._from_msg(msg)
                    try:
                        name = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        continue
                    if attrs.st_mode is not None and stat.S_ISREG(attrs.st_mode):
                        found.append(Arrival(name, attrs.st_size or 0))
            self.sftp._request(CMD_CLOSE, handle)
        return found

    def fetch(self, name: str, local: Path, max_bytes: int, listed_size: int) -> Path:
        """Download `<download_dir>/<name>` to `local` (whole or not at all), at most `max_bytes`.

        `listed_size` is the size the listing showed: files above one request are read
        ahead (prefetch) without asking for the size again; a small file is read at once,
        because prefetch's thread and `stat` cost about 5 ms of the 7.6 ms a 4 KiB fetch took.
        """
        remote = f"{_folder(self.endpoint.download_dir)}/{name}"
        tmp = local.with_name(f".{local.name}.tmp")
        size = 0
        try:
            with _translated(f"fetch of {name} from {self._name}"):
                with self.sftp.open(remote, "rb") as src, tmp.open("wb") as dst:
                    if listed_size > READ_AHEAD_FROM:
                        src.prefetch(listed_size)
                    while chunk := src.read(CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise TransferFailed(
                                f"{name} on {self._name} grew past {max_bytes} bytes while fetched"
                            )
                        dst.write(chunk)
                publish(tmp, local)  # after `dst` is closed: whole, or not at all
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def fetch_all(self, files: list[Wanted]) -> list[Path | GatewayError]:
        """Download each as `fetch` does; each one's outcome, in order: where it now lies,
        or the error that kept it out (once a download fails, that of every one after it
        not yet in).

        Files listed at up to SMALL bytes come TOGETHER at a time, each step's requests in
        flight at once: open; read the listed size, and one byte past it, which must be
        the end (a server may answer a read with less than asked: the file is then not
        whole yet); close. A file that is not as listed, or whose step does not go
        plainly, is left to `fetch`, as are larger files.
        """
        small = [i for i, w in enumerate(files) if w.arrival.size <= min(SMALL, w.max_bytes)]
        return self._batched(
            len(files), small, f"fetch from {self._name}",
            lambda batch: self._read_together([files[i] for i in batch]),
            lambda i: self.fetch(files[i].arrival.name, files[i].local, files[i].max_bytes,
                                 files[i].arrival.size),
        )  # fmt: skip

    def _read_together(self, files: list[Wanted]) -> list[Path | None]:
        """The plain way of `fetch_all` for small files: where each one now lies, or None
        for a file it left to `fetch`."""
        folder = _folder(self.endpoint.download_dir)
        opened = self._ask([(CMD_OPEN, f"{folder}/{w.arrival.name}", SFTP_FLAG_READ,
                             paramiko.SFTPAttributes()) for w in files])  # fmt: skip
        handle = {i: msg.get_binary() for i, (kind, msg) in enumerate(opened) if kind == CMD_HANDLE}
        reads: list[tuple[object, ...]] = []
        for i, h in handle.items():  # the listed bytes (none for an empty file), then the end
            size = files[i].arrival.size
            reads += [(CMD_READ, h, int64(0), size)] if size else []
            reads.append((CMD_READ, h, int64(size), 1))
        answers = iter(self._ask(reads))
        self._ask([(CMD_CLOSE, h) for h in handle.values()])  # after the reads: nothing to lose
        got: list[Path | None] = [None] * len(files)
        for i in handle:
            size = files[i].arrival.size
            data = _data(*next(answers)) if size else b""
            end = _data(*next(answers))
            if data is not None and len(data) == size and end == b"":
                write_atomic(files[i].local, data)
                got[i] = files[i].local
        return got

    def remove_downloads(self, names: list[str]) -> list[TransferFailed | None]:
        """Remove files from the partner's download folder once their outcome is recorded,
        all requests in flight at once; each one's outcome (None: gone, or already gone)."""
        folder = _folder(self.endpoint.download_dir)
        with _translated(f"removal of {len(names)} files on {self._name}"):
            answers = self._ask([(CMD_REMOVE, f"{folder}/{name}") for name in names])
        outcomes: list[TransferFailed | None] = []
        for name, (kind, msg) in zip(names, answers, strict=True):
            code = msg.get_int() if kind == CMD_STATUS else None
            if code in (SFTP_OK, SFTP_NO_SUCH_FILE):
                outcomes.append(None)
                continue
            why = msg.get_text().splitlines()[0][:120] if code is not None else f"answer {kind}"
            outcomes.append(
                TransferFailed(f"removal of {name} on {self._name} failed ({why}); will retry")
            )
        return outcomes

    def _exists(self, path: str) -> bool:
        try:
            mode = self.sftp.stat(path).st_mode
        except FileNotFoundError:
            return False
        return mode is None or not stat.S_ISDIR(mode)

    def _compare(self, path: str, sha256: str) -> Placed:
        digest = hashlib.sha256()
        with self.sftp.open(path, "rb") as f:
            f.prefetch()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise RemoteConflict(
                f"{self._name} already holds {path} with other content; nothing was "
                "overwritten. Ask the partner to remove it, then `gateway retry`"
            )
        return Placed(path, already_there=True)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(OSError):
            self.sftp.remove(path)


class _Client(paramiko.SFTPClient):  # type: ignore[misc]
    """paramiko's SFTP client, able to send several requests in one write.

    Written one by one, each request went out as an SSH packet of its own, encrypted,
    authenticated and sent by itself: most of what a small request cost the client.
    """

    _held: list[bytes] | None = None

    def _write_all(self, out: bytes) -> None:
        if self._held is None:
            super()._write_all(out)
        else:
            self._held.append(out)

    def send_together(self, answers: _Answers, requests: list[tuple[object, ...]]) -> list[int]:
        """Make each request (`(CMD, *args)`), its answer to be handed to `answers`, and send
        them all in one write; their numbers, in order."""
        self._held = []
        try:
            numbers = [self._async_request(answers, *request) for request in requests]
            out = b"".join(self._held)
        finally:
            self._held = None
        self._write_all(out)
        return numbers


class _Answers:
    """Keeps the answers paramiko hands to the requests made with it as their file object."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, kind: int, msg: paramiko.Message, number: int) -> None:
        self.got[number] = (kind, msg)


def _folder(path: str) -> str:
    """A remote folder as a path to join names to: "." for the login folder."""
    return path.rstrip("/") or "."


def _data(kind: int, msg: paramiko.Message) -> bytes | None:
    """The bytes a read was answered with (none at the end of the file), or None."""
    if kind == CMD_DATA:
        return bytes(msg.get_string())
    return b"" if kind == CMD_STATUS and msg.get_int() == SFTP_EOF else None


def _ok(kind: int, msg: paramiko.Message) -> bool:
    """Whether an answer is the status "OK"."""
    return bool(kind == CMD_STATUS and msg.get_int() == SFTP_OK)


class RemotePart:
    """A file being written on a partner's server under its hidden `.part` name.

    Writes are pipelined: an error may show only at a later write or at `close`, which
    reads the server's answer to every write still unanswered (paramiko's own close does
    not look at them, nor at the answer to closing). `whole` says `close` got that far;
    leaving the `with` block without it abandons the file.
    """

    def __init__(self, handle: paramiko.SFTPFile, request: int, what: str) -> None:
        self._handle = handle
        self._what = what
        #: Bytes to hand to `write` at a time: whole requests (a 1 MiB block would leave a
        #: short fifth request of 261,120-byte ones).
        self.block = request * max(1, CHUNK // request)
        self.whole = False

    def __enter__(self) -> RemotePart:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Abandon the file unless `close` was called: the server keeps what it took."""
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            self._handle.close()

    def write(self, chunk: bytes) -> None:
        """Send `chunk` after what was sent before."""
        with _translated(self._what):
            self._handle.write(chunk)

    def close(self) -> None:
        """Close the file once the server has said yes to every write."""
        handle = self._handle
        with _translated(self._what):
            handle.flush()
            while handle._reqs:
                request = handle._reqs.popleft()
                if request not in handle.sftp._expecting:
                    continue  # answered while paramiko waited for another: `place` checks the size
                kind, _ = handle.sftp._read_response(request)  # raises on an error status
                if kind != CMD_STATUS:
                    raise paramiko.SFTPError(f"the server answered a write with message {kind}")
            handle.close()
        self.whole = True


def _why(err: BaseException) -> str:
    """A short, secret-free description of a network error."""
    if isinstance(err, socket.timeout | TimeoutError) or "protocol banner" in str(err):
        return "timed out"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return text.splitlines()[0][:120]
