"""Delivery to push partners: `sealed` -> `delivered`, over one SFTP session per batch.

Checkpoint, then act: the attempt is recorded before the upload starts; the remote name
is fixed by the package id, and `put_atomic` treats a target already holding the same
bytes as delivered, so a delivery cut off at any instant is finished, never repeated
under a second name.

A large package is uploaded while it is sealed (`stream`): gpg and the upload take about
as long as each other, so one after the other they took twice as long as the bare tools
(docs/performance.md, scenario 1).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from gateway.adapters.home import Home
from gateway.adapters.ledger import Ledger
from gateway.adapters.sftp import Endpoint, SftpPartner, Uploaded
from gateway.core.errors import GatewayError, PartnerError, Transient
from gateway.core.lifecycle import State
from gateway.core.model import Package, Partner, utc
from gateway.core.names import wire_name
from gateway.core.settings import Settings
from gateway.pipeline.sealing import Sealer
from gateway.pipeline.setback import Retry

log = logging.getLogger("gateway")
#: Uploads recorded per ledger commit. Each commit is an fsync (about 9 ms under load), which
#: was a third of the cost of a small package; a crash costs at most this many re-checks.
GROUP = 32
#: Payloads from this size up are uploaded while they are sealed. Below it the overlap saves
#: little (32 MiB go up in about 0.25 s here), and a partner turn's batch costs less per
#: package (one ledger commit per GROUP uploads).
STREAM_FROM = 32 * 1024 * 1024
#: A session is kept this long after a turn, for the partner's next turn. While a burst is
#: sealed, a partner's turns come a few tenths of a second apart, and a new session costs
#: 0.13 s or more (key exchange, login): 60 of them per 1000 small packages.
KEEP_SECONDS = 5.0


class Deliverer:
    """Pushes sealed packages to a partner's SFTP server."""

    def __init__(self, home: Home, ledger: Ledger, settings: Settings, retry: Retry) -> None:
        self.home = home
        self.ledger = ledger
        self.settings = settings
        self.retry = retry
        self._kept: dict[str, tuple[SftpPartner, float]] = {}  # partner id: (session, since)
        self._streaming: set[str] = set()  # package ids being uploaded beside gpg
        self._lock = threading.Lock()

    def session(self, partner: Partner) -> SftpPartner:
        """A new (not yet open) SFTP session with a push partner."""
        return SftpPartner(
            _endpoint(partner),
            self.home.ssh_identity,
            self.home.known_hosts,
            self.settings.sftp_connect_timeout_seconds,
            self.settings.sftp_io_timeout_seconds,
        )

    @contextlib.contextmanager
    def connected(self, partner: Partner) -> Iterator[SftpPartner]:
        """An open session with `partner`: the one kept from its last turn if still good, else new.

        It is kept for the next turn unless this one ended in an error or closed it.
        """
        with self._lock:
            sftp, since = self._kept.pop(partner.id, (None, 0.0))
        if sftp is not None and not (
            time.monotonic() - since < KEEP_SECONDS and sftp.reusable(_endpoint(partner))
        ):
            sftp.close()
            sftp = None
        if sftp is None:
            sftp = self.session(partner).open()
        try:
            yield sftp
        except BaseException:
            sftp.close()
            raise
        if sftp.closed:  # the turn found it broken
            return
        with self._lock:
            replaced = self._kept.get(partner.id)
            self._kept[partner.id] = (sftp, time.monotonic())
        if replaced is not None:  # another session came back first (an upload beside a turn)
            replaced[0].close()

    def close_idle(self, after: float = KEEP_SECONDS) -> None:
        """Close the sessions kept for `after` seconds or more (all of them with 0)."""
        now = time.monotonic()
        with self._lock:
            idle = [pid for pid, (_, since) in self._kept.items() if now - since >= after]
            sessions = [self._kept.pop(pid)[0] for pid in idle]
        for sftp in sessions:
            sftp.close()

    def deliver(self, partner: Partner, packages: list[Package]) -> None:
        """Deliver `packages` (all sealed, all for `partner`) over one session.

        A failure to connect sets back the whole batch; a failure during one upload sets
        back that package and the rest (the session is gone); a conflict holds one package.
        """
        if not partner.enabled:
            self.retry.setback_all(packages, PartnerError(f"partner {partner.id} is disabled"))
            return
        with self._lock:  # a package being uploaded beside gpg is that upload's to finish
            packages = [p for p in packages if p.package_id not in self._streaming]
        if not packages:
            return
        handled: list[Package] = []  # delivered and recorded, or held
        try:
            with self.connected(partner) as sftp:
                for start in range(0, len(packages), GROUP):
                    self._deliver_group(sftp, packages[start : start + GROUP], handled)
        except GatewayError as err:
            self.retry.setback_all(packages[len(handled) :], err)

    def streams(self, package: Package) -> bool:
        """Whether `package` (received) is to be uploaded while it is sealed."""
        partner = self.ledger.partner(str(package.partner))
        return (
            partner.transport == "push"
            and bool(partner.enabled)
            and (package.payload_size or 0) >= STREAM_FROM
        )

    def stream(self, sealer: Sealer, package: Package) -> None:
        """Seal `package` while uploading it, and rename it into place once `sealed` is recorded.

        Nothing shows on the partner's side before the ledger holds the ciphertext's
        SHA-256: the bytes go to the hidden `.part` name, renamed into place only after
        `sealed` is recorded. Until `delivered` is, this process's delivery turns leave
        the package alone (one `gateway run` per home); after a crash the partner's turn
        uploads it again over the `.part`. A session that cannot be had or breaks changes
        nothing but the timing: the package is sealed all the same, and the partner's
        next turn delivers it.
        """
        with self._lock:
            self._streaming.add(package.package_id)
        try:
            self._stream(sealer, package)
        finally:
            with self._lock:
                self._streaming.discard(package.package_id)

    def _stream(self, sealer: Sealer, package: Package) -> None:
        partner = self.ledger.partner(str(package.partner))
        name = wire_name(package.package_id)
        sftp: SftpPartner | None = None
        with contextlib.ExitStack() as stack:
            try:
                sftp = stack.enter_context(self.connected(partner))
                part = stack.enter_context(sftp.open_part(name))
            except GatewayError as err:
                if sftp is not None:
                    sftp.close()  # not kept for the next turn
                log.info("%s: sealed first, delivered after (%s)", package.package_id, err)
                sealer.seal(package)
                return
            where = _where(sftp)
            self.ledger.note(package.package_id, "deliver.attempt", {"endpoint": where})
            sealed = sealer.seal(package, tee=part)
            if not part.whole:
                sftp.close()  # the upload failed: the session is not kept for the next turn
                return
            try:
                put = sftp.place(
                    name, int(sealed.ciphertext_size or 0), str(sealed.ciphertext_sha256)
                )
            except GatewayError as err:
                sftp.close()
                self.retry.setback(sealed, err)
                return
            self._delivered(sealed, put, where)

    def _deliver_group(
        self, sftp: SftpPartner, group: list[Package], handled: list[Package]
    ) -> None:
        """Upload `group`, recording the attempts before and the deliveries after in one commit each.

        A crash before the second commit leaves uploaded packages `sealed`: the next round
        finds each already on the server with the same SHA-256 and records it then. Each
        package done with is appended to `handled`; a transient failure leaves the rest.
        """
        where = _where(sftp)
        with self.ledger.transaction():
            for package in group:
                self.ledger.note(package.package_id, "deliver.attempt", {"endpoint": where})
        uploaded: list[tuple[Package, Uploaded]] = []
        try:
            for package in group:
                try:
                    put = sftp.put_atomic(
                        self.home.sealed_file(package.package_id),
                        wire_name(package.package_id),
                        str(package.ciphertext_sha256),
                    )
                    uploaded.append((package, put))
                except Transient:
                    raise
                except GatewayError as err:  # a conflict on the server: this one is held
                    self.retry.setback(package, err)
                handled.append(package)
        finally:
            with self.ledger.transaction():
                for package, put in uploaded:
                    self._delivered(package, put, where)

    def _delivered(self, package: Package, put: Uploaded, where: str) -> None:
        self.ledger.transition(
            package.package_id,
            State.DELIVERED,
            "deliver",
            {
                "endpoint": where,
                "path": put.path,
                "already_there": put.already_there,
                "recipient_key": package.recipient_key,
                "ciphertext_sha256": package.ciphertext_sha256,
            },
            next_attempt_at=None,
            last_error=None,
            delivered_at=utc(self.ledger.clock()),
        )


def _endpoint(partner: Partner) -> Endpoint:
    assert partner.host and partner.port and partner.user
    return Endpoint(
        partner.host,
        partner.port,
        partner.user,
        partner.upload_dir or "upload",
        partner.download_dir or "download",
    )


def _where(sftp: SftpPartner) -> str:
    e = sftp.endpoint
    return f"sftp://{e.user}@{e.host}:{e.port}/{e.upload_dir}"
