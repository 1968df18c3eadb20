"""One conformance suite for the Transport contract (gateway/transports/base.py).

Every case runs against each backend, over a real link, and looks at the real bytes on
the partner's side:

- `openssh`: a push partner whose server is a real OpenSSH sshd;
- `dropserver`: a push partner whose server is another gateway's own drop server (XB-AGENCY,
  which knows GB-ACRO as a pull partner), as in a gateway-to-gateway exchange;
- `mailbox`: a pull partner's mailbox on this gateway (a local folder the drop server serves).

Each backend gives the transport and a `Remote`: the folders where the partner sees what
the gateway delivers and where it leaves what the gateway collects. The one case the drop
server fails on purpose (`remove_needs_read` says why) is a strict expected failure there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.adapters.home import Home
from gateway.admin import keys
from gateway.core.errors import GatewayError, RemoteConflict, TransferFailed
from gateway.core.lifecycle import State
from gateway.core.model import Outgoing, Placed, Wanted
from gateway.core.names import is_temporary, new_package_id
from gateway.transports.base import Link, Transport
from tests.helpers import GATEWAY_ID, PARTNER_ID, TEST_REGIMES, cli, gateway, set_setting

AGENCY = "XB-AGENCY"
MAX_BYTES = 64 * 1024 * 1024
SHORT_READS = 4096


@dataclasses.dataclass
class Remote:
    """The partner's side of a backend, seen where the partner would see it."""

    delivered: Path  # what the gateway delivers and answers shows here
    sent: Path  # what the partner leaves for the gateway to collect lies here
    local: Path  # the gateway's side: files to deliver, files fetched
    streams: bool  # whether `open_part` lends a part (a server) or answers None (a folder)
    placed: State
    sender: str  # the partner's authority id, the sender of the packages it leaves

    def names(self) -> list[str]:
        """Every name in the delivered folder, hidden ones included."""
        return sorted(os.listdir(self.delivered))

    def leave(self, name: str, data: bytes) -> None:
        """Leave a file for the gateway as the partner would: whole, then renamed into place."""
        tmp = self.sent / f".{name}.writing"
        tmp.write_bytes(data)
        os.rename(tmp, self.sent / name)

    def file(self, data: bytes, name: str = "sealed") -> tuple[Path, str]:
        """A local file holding `data`, and its SHA-256."""
        path = self.local / name
        path.write_bytes(data)
        return path, hashlib.sha256(data).hexdigest()


Backend = tuple[Transport, Remote]


def own_package() -> str:
    """The wire name of a package of this gateway's."""
    return f"{new_package_id(GATEWAY_ID, time.time())}.pgp"


def receipt_for_partner(remote: Remote) -> str:
    """The name of this gateway's receipt for one of the partner's packages."""
    return f"{new_package_id(remote.sender, time.time())}.receipt"


def agency(short_tmp: Path) -> tuple[Home, Path, str]:
    """A second gateway home, XB-AGENCY: the home, its exported OpenPGP key, its fingerprint."""
    home = Home(short_tmp / "xb")
    with keys.init(home, AGENCY, "tester") as gw:
        fingerprint = gw.own_key
    exported = short_tmp / "xb.asc"
    exported.write_text(cli(home, "keys", "export", "--openpgp").stdout)
    return home, exported, fingerprint


def local_folder(short_tmp: Path) -> Path:
    """The gateway's scratch folder: files to deliver, files fetched."""
    folder = short_tmp / "local"
    folder.mkdir()
    return folder


@contextlib.contextmanager
def openssh(request: pytest.FixtureRequest, short_tmp: Path, home: Home) -> Iterator[Backend]:
    """US-NCB, a push partner on a real OpenSSH sshd (the `exchange` fixture)."""
    _, _, server = request.getfixturevalue("exchange")
    with gateway(home, "daemon") as gw:
        remote = Remote(server.upload, server.download, local_folder(short_tmp), streams=True,
                        placed=State.DELIVERED, sender=PARTNER_ID)  # fmt: skip
        yield gw.transport(gw.ledger.partner(PARTNER_ID)), remote


@contextlib.contextmanager
def dropserver(request: pytest.FixtureRequest, short_tmp: Path, home: Home) -> Iterator[Backend]:
    """XB-AGENCY, a push partner whose server is its own gateway's drop server."""
    other, exported, fingerprint = agency(short_tmp)
    ours = short_tmp / "gb.asc"
    ours.write_text(cli(home, "keys", "export", "--openpgp").stdout)
    with gateway(home) as gw:
        our_fingerprint = gw.own_key
    added = cli(other, "partner", "add", GATEWAY_ID, "--openpgp-key", str(ours),
                "--fingerprint", our_fingerprint, "--pull", "--ssh-key", str(home.ssh_identity_pub),
                *TEST_REGIMES, "--reason", "conformance")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    # It answers a read with at most 4 KiB, as some servers do: a short answer must never
    # pass for a whole file.
    set_setting(other, "serve.max_read_bytes", SHORT_READS)
    with gateway(other, "daemon") as theirs:
        server = theirs.drop_server("127.0.0.1:0")
        server.start()
        try:
            url = f"sftp://{GATEWAY_ID}@127.0.0.1:{server.port}"
            host_key = other.host_key_pub.read_text()
            added = cli(home, "partner", "add", AGENCY, "--openpgp-key", str(exported),
                        "--fingerprint", fingerprint, "--push", url, "--host-key", host_key,
                        *TEST_REGIMES, "--reason", "conformance")  # fmt: skip
            assert added.exit_code == 0, added.stderr
            mailbox = other.mailbox / GATEWAY_ID
            with gateway(home, "daemon") as gw:
                remote = Remote(mailbox / "upload", mailbox / "download", local_folder(short_tmp),
                                streams=True, placed=State.DELIVERED, sender=AGENCY)  # fmt: skip
                yield gw.transport(gw.ledger.partner(AGENCY)), remote
        finally:
            server.stop()


@contextlib.contextmanager
def mailbox(request: pytest.FixtureRequest, short_tmp: Path, home: Home) -> Iterator[Backend]:
    """XB-AGENCY, a pull partner: its mailbox on this gateway."""
    other, exported, fingerprint = agency(short_tmp)
    added = cli(home, "partner", "add", AGENCY, "--openpgp-key", str(exported),
                "--fingerprint", fingerprint, "--pull", "--ssh-key", str(other.ssh_identity_pub),
                *TEST_REGIMES, "--reason", "conformance")  # fmt: skip
    assert added.exit_code == 0, added.stderr
    box = home.mailbox / AGENCY
    with gateway(home, "daemon") as gw:
        remote = Remote(box / "download", box / "upload", local_folder(short_tmp), streams=False,
                        placed=State.PUBLISHED, sender=AGENCY)  # fmt: skip
        yield gw.transport(gw.ledger.partner(AGENCY)), remote


BACKENDS: dict[
    str, Callable[[pytest.FixtureRequest, Path, Home], contextlib.AbstractContextManager[Backend]]
] = {"openssh": openssh, "dropserver": dropserver, "mailbox": mailbox}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, short_tmp: Path, home: Home) -> Iterator[Backend]:
    """A transport to a partner, and the partner's side of it."""
    with BACKENDS[request.param](request, short_tmp, home) as pair:
        yield pair


def known_bug(request: pytest.FixtureRequest, reason: str) -> None:
    """Expect the running case to fail with `TransferFailed` on `dropserver` (a product bug)."""
    if request.node.callspec.params["backend"] == "dropserver":
        marker = pytest.mark.xfail(reason=reason, raises=TransferFailed, strict=True)
        request.applymarker(marker)


@pytest.fixture
def remove_needs_read(request: pytest.FixtureRequest) -> None:
    """The drop server lets a client remove from /download only a file it read whole in the
    same session (`_Mailbox.remove`): a package is `delivered` once read, so a partner
    cannot make one vanish unread. The pipeline removes a file over its size limit without
    fetching it; where that is refused it leaves the file alone and looks again only after
    a backoff (gateway/pipeline/collect.py, `Collector._refuse`)."""
    known_bug(request, "the drop server refuses to remove a file not read whole")


# -- deliver ------------------------------------------------------------------------------


def one(send: Callable[[list[Outgoing]], list[Placed | GatewayError]], local: Path, name: str,
        digest: str) -> Placed:  # fmt: skip
    """One file through `link.deliver` or `link.answer`: where it was placed; its error raised."""
    [outcome] = send([Outgoing(local, name, digest)])
    if isinstance(outcome, GatewayError):
        raise outcome
    return outcome


def test_deliver_places_the_exact_bytes_under_its_name(backend: Backend) -> None:
    transport, remote = backend
    data = os.urandom(300_000)
    local, digest = remote.file(data)
    name = own_package()
    with transport.link() as link:
        placed = one(link.deliver, local, name, digest)
    assert placed.already_there is False
    assert placed.path.endswith(f"/{name}")
    assert remote.names() == [name], "the file alone, nothing hidden left beside it"
    assert (remote.delivered / name).read_bytes() == data


def test_delivering_the_same_bytes_again_is_already_there(backend: Backend) -> None:
    transport, remote = backend
    data = os.urandom(100_000)
    local, digest = remote.file(data)
    name = own_package()
    with transport.link() as link:
        assert one(link.deliver, local, name, digest).already_there is False
        assert one(link.deliver, local, name, digest).already_there is True
    with transport.link() as link:  # a new turn, after a crash that forgot the first answer
        assert one(link.deliver, local, name, digest).already_there is True
    assert remote.names() == [name]
    assert (remote.delivered / name).read_bytes() == data


def test_other_bytes_under_a_taken_name_conflict_and_overwrite_nothing(backend: Backend) -> None:
    transport, remote = backend
    first, second = os.urandom(50_000), os.urandom(50_000)
    name = own_package()
    with transport.link() as link:
        one(link.deliver, remote.file(first, "first")[0], name, hashlib.sha256(first).hexdigest())
        other, digest = remote.file(second, "second")
        with pytest.raises(RemoteConflict):
            one(link.deliver, other, name, digest)
    assert remote.names() == [name]
    assert (remote.delivered / name).read_bytes() == first


def test_many_files_at_once_each_have_their_own_outcome(backend: Backend) -> None:
    """A turn's worth of files of many sizes, one already there and one name taken by other
    bytes: each outcome in order, every file placed whole, the taken one untouched."""
    transport, remote = backend
    sizes = [0, 1, 4096, 64 * 1024, 64 * 1024 + 1, 300_000, *[3000] * 30]
    datas = [os.urandom(n) for n in sizes]
    files = [Outgoing(remote.file(data, f"f{i}")[0], own_package(), hashlib.sha256(data).hexdigest())
             for i, data in enumerate(datas)]  # fmt: skip
    same, taken, theirs = 2, 20, os.urandom(3000)
    with transport.link() as link:
        one(link.deliver, files[same].local, files[same].name, files[same].sha256)
        taker, digest = remote.file(theirs, "theirs")
        one(link.deliver, taker, files[taken].name, digest)
        outcomes = link.deliver(files)
    assert isinstance(outcomes[taken], RemoteConflict)
    assert [o.already_there if isinstance(o, Placed) else None for o in outcomes] == [
        None if i == taken else i == same for i in range(len(files))
    ]
    assert remote.names() == sorted(f.name for f in files), "nothing hidden left beside them"
    for i, (f, data) in enumerate(zip(files, datas, strict=True)):
        assert (remote.delivered / f.name).read_bytes() == (theirs if i == taken else data)


def test_a_file_the_server_refuses_holds_back_no_other(backend: Backend) -> None:
    """A part the server cannot write (a folder stands at its name) is that one file's
    transient outcome; the files before and after it are placed whole."""
    transport, remote = backend
    datas = [os.urandom(4000) for _ in range(5)]
    files = [Outgoing(remote.file(data, f"f{i}")[0], own_package(), hashlib.sha256(data).hexdigest())
             for i, data in enumerate(datas)]  # fmt: skip
    refused = files[2]
    hidden = f".{refused.name}.part" if remote.streams else f".{refused.name}.tmp"
    (remote.delivered / hidden).mkdir()
    with transport.link() as link:
        if not remote.streams:  # the gateway's own folder: its trouble is the host's, raised
            with pytest.raises(IsADirectoryError):
                link.deliver(files)
            return
        outcomes = link.deliver(files)
    assert isinstance(outcomes[2], TransferFailed)
    assert all(
        isinstance(o, Placed) and not o.already_there for i, o in enumerate(outcomes) if i != 2
    )
    assert remote.names() == sorted([hidden, *(f.name for f in files if f is not refused)])
    for f, data in zip(files, datas, strict=True):
        if f is not refused:
            assert (remote.delivered / f.name).read_bytes() == data


class Watch(threading.Thread):
    """Reads `folder/name` over and over while a delivery runs; notes every look."""

    def __init__(self, folder: Path, name: str, expected: bytes) -> None:
        super().__init__(name="watch-delivery", daemon=True)
        self.folder, self.name, self.expected = folder, name, expected
        self.stop = threading.Event()
        self.absent = self.whole = 0
        self.torn: list[int] = []  # sizes of what showed under the name, not whole
        self.hidden: set[str] = set()  # other names seen in the folder meanwhile

    def run(self) -> None:
        while not self.stop.is_set():
            self.hidden.update(n for n in os.listdir(self.folder) if n != self.name)
            try:
                data = (self.folder / self.name).read_bytes()
            except FileNotFoundError:
                self.absent += 1
                continue
            if data == self.expected:
                self.whole += 1
            else:
                self.torn.append(len(data))


def test_nothing_partial_ever_shows_under_the_final_name(backend: Backend) -> None:
    """A watcher reading the final name throughout an 8 MiB delivery only ever finds it whole."""
    transport, remote = backend
    data = os.urandom(8 * 1024 * 1024)
    local, digest = remote.file(data)
    name = own_package()
    watch = Watch(remote.delivered, name, data)
    watch.start()
    try:
        with transport.link() as link:
            one(link.deliver, local, name, digest)
        deadline = time.monotonic() + 10
        while not watch.whole and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watch.stop.set()
        watch.join(10)
    assert watch.torn == [], "a partial file showed under the final name"
    assert watch.whole, "the watcher saw the file placed"
    assert watch.hidden, "the watcher looked while the file was being written"
    assert remote.names() == [name], (
        f"left behind: {remote.names()} (seen meanwhile: {watch.hidden})"
    )


def test_answer_behaves_as_deliver(backend: Backend) -> None:
    transport, remote = backend
    receipt, other = b"-----BEGIN PGP MESSAGE-----\nreceipt\n", b"-----BEGIN PGP MESSAGE-----\nx\n"
    local, digest = remote.file(receipt, "receipt")
    name = receipt_for_partner(remote)
    with transport.link() as link:
        placed = one(link.answer, local, name, digest)
        assert placed.already_there is False
        assert placed.path.endswith(f"/{name}")
        assert one(link.answer, local, name, digest).already_there is True
        with pytest.raises(RemoteConflict):
            one(
                link.answer, remote.file(other, "other")[0], name, hashlib.sha256(other).hexdigest()
            )
    assert remote.names() == [name]
    assert (remote.delivered / name).read_bytes() == receipt


# -- open_part, then place ----------------------------------------------------------------


def test_part_written_closed_and_placed_is_a_delivery(backend: Backend) -> None:
    """Nothing shows under the name before `place`; after it, exactly the bytes written."""
    transport, remote = backend
    data = os.urandom(3 * 1024 * 1024 + 123)
    digest = hashlib.sha256(data).hexdigest()
    name = own_package()
    with transport.link() as link:
        part = link.open_part(name)
        if not remote.streams:
            assert part is None
            assert remote.names() == []
            return
        assert part is not None
        with part:
            assert part.block > 0
            for start in range(0, len(data), part.block):
                part.write(data[start : start + part.block])
                assert name not in remote.names()
            assert not part.whole
            part.close()
        assert part.whole
        assert name not in remote.names(), "nothing under the name before place"
        placed = link.place(name, len(data), digest)
    assert placed.already_there is False
    assert placed.path.endswith(f"/{name}")
    assert remote.names() == [name]
    assert (remote.delivered / name).read_bytes() == data


def write_part(link: Link, name: str, data: bytes) -> bool:
    """Write `data` to a part of `name` and close it; say whether the link lent one."""
    part = link.open_part(name)
    if part is None:
        return False
    with part:
        for start in range(0, len(data), part.block):
            part.write(data[start : start + part.block])
        part.close()
    assert part.whole
    return True


def test_placing_over_a_taken_name_answers_as_deliver(backend: Backend) -> None:
    """Placed over the same bytes: already there; over other bytes: a conflict. No part stays."""
    transport, remote = backend
    first, second = os.urandom(40_000), os.urandom(40_000)
    name = own_package()
    with transport.link() as link:
        one(link.deliver, remote.file(first)[0], name, hashlib.sha256(first).hexdigest())
        if not write_part(link, name, first):
            assert not remote.streams
            return
        placed = link.place(name, len(first), hashlib.sha256(first).hexdigest())
        assert placed.already_there is True
        assert remote.names() == [name], "the part is removed once found already there"
        assert write_part(link, name, second)
        with pytest.raises(RemoteConflict):
            link.place(name, len(second), hashlib.sha256(second).hexdigest())
    assert (remote.delivered / name).read_bytes() == first
    assert remote.names() == [name]


def test_an_abandoned_part_leaves_nothing_under_the_final_name(backend: Backend) -> None:
    transport, remote = backend
    name = own_package()
    with transport.link() as link:
        part = link.open_part(name)
        if not remote.streams:
            assert part is None
            assert remote.names() == []
            return
        assert part is not None
        with part:
            part.write(os.urandom(part.block))
            part.write(os.urandom(1000))
        assert not part.whole
    assert name not in remote.names()


def test_a_delivery_cut_off_and_asked_again_goes_up_whole(backend: Backend) -> None:
    """Cut off and asked again: after an abandoned part, `deliver` places the file whole."""
    transport, remote = backend
    data = os.urandom(600_000)
    local, digest = remote.file(data)
    name = own_package()
    with transport.link() as link:
        part = link.open_part(name)
        if part is not None:
            with part:
                part.write(data[: part.block // 2])
        assert one(link.deliver, local, name, digest).already_there is False
    assert remote.names() == [name]
    assert (remote.delivered / name).read_bytes() == data


# -- collect, fetch, remove ---------------------------------------------------------------


def outside_names(remote: Remote, backend_id: str) -> list[str | bytes]:
    """Names in the partner's folder that are not of the contract, to be left alone."""
    pid = new_package_id(remote.sender, time.time())
    names: list[str | bytes] = [
        "notes.txt",
        f".{pid}.pgp.part",
        f"{pid}.pgp.tmp",
        f"{pid}.zip",
        f"{pid.lower()}.pgp",
        f"{remote.sender}-NOTAULID.pgp",
    ]
    # A name that is not UTF-8: an OpenSSH server and a local folder list it as bytes. The
    # drop server lists only its own gateway's mailbox, which that gateway alone writes; such a
    # name there makes its whole listing of the folder fail (`_Mailbox.list_folder` cannot
    # send it), so it is not tried there.
    if backend_id != "dropserver":
        names.append(f"{pid}.pgp".encode() + b"\xff")
    return names


@pytest.fixture
def backend_id(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["backend"])


def test_collect_lists_exactly_the_names_of_the_contract(backend: Backend, backend_id: str) -> None:
    transport, remote = backend
    package = f"{new_package_id(remote.sender, time.time())}.pgp"
    receipt = f"{new_package_id(GATEWAY_ID, time.time())}.receipt"
    sent = {package: os.urandom(70_000), receipt: b"-----BEGIN PGP MESSAGE-----\n"}
    for name, data in sent.items():
        remote.leave(name, data)
    others = outside_names(remote, backend_id)
    for other in others:
        path = os.path.join(os.fsencode(remote.sent), os.fsencode(other))
        with open(path, "wb") as f:
            f.write(b"not of the contract")
    folder = remote.sent / f"{new_package_id(remote.sender, time.time())}.pgp"
    folder.mkdir()  # a folder under a name of the contract is no file

    with transport.link() as link:
        arrivals = link.collect()
        again = link.collect()
    assert {a.name: a.size for a in arrivals} == {n: len(d) for n, d in sent.items()}
    assert again == arrivals, "a stable order"
    left = set(os.listdir(os.fsencode(remote.sent)))
    # The gateway's own mailbox keeps no finished file of another name: it is taken into
    # spool/incoming, where the pipeline quarantines it. Elsewhere everything is left alone.
    taken = {
        os.fsencode(o)
        for o in others
        if backend_id == "mailbox" and not is_temporary(os.fsdecode(o))
    }
    assert ({os.fsencode(o) for o in others} - taken) | {os.fsencode(folder.name)} <= left
    assert not taken & left


def test_fetch_brings_the_bytes_whole_and_remove_forgets_them(backend: Backend) -> None:
    transport, remote = backend
    large, small = (f"{new_package_id(remote.sender, time.time())}.pgp" for _ in range(2))
    receipt = f"{new_package_id(GATEWAY_ID, time.time())}.receipt"
    sent = {large: os.urandom(500_000), small: os.urandom(10_000), receipt: b"-----BEGIN PGP"}
    for name, data in sent.items():
        remote.leave(name, data)
    fetched = remote.local / "fetched"
    fetched.mkdir()

    with transport.link() as link:
        arrivals = link.collect()
        assert sorted(a.name for a in arrivals) == sorted(sent)
        wanted = [Wanted(a, fetched / a.name, MAX_BYTES) for a in arrivals]
        assert link.fetch(wanted) == [w.local for w in wanted]
        assert {a.name: (fetched / a.name).read_bytes() for a in arrivals} == sent
        assert link.remove(arrivals) == [None] * 3
        assert os.listdir(remote.sent) == []
        assert link.collect() == []
        assert link.remove(arrivals) == [None] * 3, "already gone is gone"
    assert sorted(os.listdir(fetched)) == sorted(sent), "whole files, nothing temporary beside"
    with transport.link() as link:  # the next turn
        assert link.collect() == []
    assert sorted(os.listdir(remote.sent)) == []


def test_a_file_changed_after_the_listing_is_fetched_as_it_is_then(backend: Backend) -> None:
    """A small file that grew after the listing comes whole, with what it holds when
    fetched; one grown past its limit is not brought, and holds back no other."""
    transport, remote = backend
    if not remote.streams:
        pytest.skip("a mailbox's files are in the gateway's custody from `collect` on")
    names = sorted(f"{new_package_id(remote.sender, time.time())}.pgp" for _ in range(3))
    for name in names:
        remote.leave(name, os.urandom(2000))
    fetched = remote.local / "fetched"
    fetched.mkdir()
    with transport.link() as link:
        arrivals = sorted(link.collect(), key=lambda a: a.name)
        grown = os.urandom(200_000)
        remote.leave(names[0], grown)
        remote.leave(names[1], os.urandom(9000))
        outcomes = link.fetch([Wanted(arrivals[0], fetched / names[0], MAX_BYTES),
                               Wanted(arrivals[1], fetched / names[1], 8000),
                               Wanted(arrivals[2], fetched / names[2], MAX_BYTES)])  # fmt: skip
    assert outcomes[0] == fetched / names[0]
    assert (fetched / names[0]).read_bytes() == grown
    assert isinstance(outcomes[1], TransferFailed) and "grew past 8000 bytes" in str(outcomes[1])
    assert outcomes[2] == fetched / names[2]
    assert sorted(os.listdir(fetched)) == [names[0], names[2]], "nothing temporary left"


@pytest.mark.usefixtures("remove_needs_read")
def test_remove_forgets_a_collected_file_not_fetched(backend: Backend) -> None:
    """What the pipeline does with a file over its size limit: collect, then remove unread."""
    transport, remote = backend
    name = f"{new_package_id(remote.sender, time.time())}.pgp"
    remote.leave(name, os.urandom(5000))
    with transport.link() as link:
        [arrival] = link.collect()
        [failure] = link.remove([arrival])
        if failure is not None:
            raise failure
    assert os.listdir(remote.sent) == []
    with transport.link() as link:
        assert link.collect() == []


# -- what the link and the transport say --------------------------------------------------


def test_link_says_where_and_transport_what_a_placed_package_is(backend: Backend) -> None:
    transport, remote = backend
    with transport.link() as link:
        assert isinstance(link.where, str) and link.where
    assert transport.placed is remote.placed
