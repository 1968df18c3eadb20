"""The plaintext of a package (SPEC section 4): the manifest parser and the streamed tar."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import envelope, names
from gateway.core.envelope import ChunkReader, Manifest, Party, Payload, parse_manifest, tar_chunks
from gateway.core.errors import InputRefused, SpoolDamaged

PROPERTY = settings(max_examples=200, deadline=None, database=None)
MTIME = 1_764_352_800  # 2025-11-28T18:00:00Z
MIB = 1024 * 1024

SENDER_KEY = "0123456789ABCDEF0123456789ABCDEF01234567"
RECIPIENT_KEY = "FEDCBA9876543210FEDCBA9876543210FEDCBA98"
PID = "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"


def manifest_for(data: bytes, name: str = "notice.xml", **changes: Any) -> Manifest:
    """A valid manifest describing payload `data` under `name`."""
    base = Manifest(
        package_id=PID,
        kind="conviction",
        sender=Party("GB-ACRO", SENDER_KEY),
        recipient=Party("US-NCB", RECIPIENT_KEY),
        created_at="2026-11-28T18:00:00Z",
        payload=Payload(name, len(data), hashlib.sha256(data).hexdigest()),
    )
    return dataclasses.replace(base, **changes)


FULL = manifest_for(
    b"<notice/>",
    reference="case 2026/17",
    legal_basis="CoE-1959-Art22",
    marking="OFFICIAL-SENSITIVE",
    in_reply_to="US-NCB-01JDQ8N5V3K7Q2Y9ZC4T6W8E1N",
)


def doc() -> dict[str, Any]:
    """The full valid manifest as a JSON document, to spoil one field at a time."""
    loaded: dict[str, Any] = json.loads(FULL.to_json())
    return loaded


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


# --- strategies ---------------------------------------------------------------------------

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
authorities = st.builds(
    lambda country, rest: f"{country}-{rest}",
    st.text(_UPPER, min_size=2, max_size=2),
    st.text(_UPPER + "0123456789", min_size=1, max_size=16),
)
fingerprints = st.binary(min_size=20, max_size=20).map(lambda b: b.hex().upper())
digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
package_ids = st.builds(
    lambda sender, ms, rand: f"{sender}-{names.new_ulid(ms / 1000 + 0.0005, rand)}",
    authorities,
    st.integers(0, 2**48 - 1),
    st.binary(min_size=10, max_size=10),
)
times = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
)


def _valid_payload_name(name: str) -> bool:
    try:
        names.payload_name(name)
    except InputRefused:
        return False
    return True


payload_names = st.text(min_size=1, max_size=60).filter(_valid_payload_name)
optional_text = st.none() | st.text(min_size=1, max_size=80)
manifests = st.builds(
    Manifest,
    package_id=package_ids,
    kind=st.sampled_from(names.KINDS),
    sender=st.builds(Party, authorities, fingerprints),
    recipient=st.builds(Party, authorities, fingerprints),
    created_at=times,
    payload=st.builds(Payload, payload_names, st.integers(0, 2**64), digests),
    reference=optional_text,
    legal_basis=optional_text,
    marking=optional_text,
    in_reply_to=st.none() | package_ids,
)


# --- the manifest ---------------------------------------------------------------------------


def test_full_manifest_json_is_the_spec_layout() -> None:
    assert json.loads(FULL.to_json()) == {
        "schema": "gateway-envelope/1",
        "package_id": PID,
        "kind": "conviction",
        "sender": {"id": "GB-ACRO", "key": SENDER_KEY},
        "recipient": {"id": "US-NCB", "key": RECIPIENT_KEY},
        "created_at": "2026-11-28T18:00:00Z",
        "reference": "case 2026/17",
        "legal_basis": "CoE-1959-Art22",
        "marking": "OFFICIAL-SENSITIVE",
        "in_reply_to": "US-NCB-01JDQ8N5V3K7Q2Y9ZC4T6W8E1N",
        "payload": {"name": "notice.xml", "size": 9, "sha256": FULL.payload.sha256},
    }


def test_optional_fields_are_left_out_when_absent() -> None:
    minimal = manifest_for(b"")
    assert set(json.loads(minimal.to_json())) == {
        "schema",
        "package_id",
        "kind",
        "sender",
        "recipient",
        "created_at",
        "payload",
    }
    assert parse_manifest(minimal.to_json()) == minimal


def test_manifest_json_keeps_non_ascii_as_utf8() -> None:
    manifest = manifest_for(b"x", name="dossier é.xml")
    assert "dossier é.xml".encode() in manifest.to_json()
    assert parse_manifest(manifest.to_json()) == manifest


@PROPERTY
@given(manifests)
def test_manifest_round_trips_through_json(manifest: Manifest) -> None:
    assert parse_manifest(manifest.to_json()) == manifest


def test_optional_text_fields_take_up_to_1024_characters() -> None:
    longest = dataclasses.replace(FULL, reference="r" * 1024, legal_basis="é" * 1024)
    assert parse_manifest(longest.to_json()) == longest


def test_manifest_of_exactly_the_size_limit_is_accepted() -> None:
    body = FULL.to_json()
    padded = body + b" " * (envelope.MAX_MANIFEST_BYTES - len(body))
    assert len(padded) == envelope.MAX_MANIFEST_BYTES
    assert parse_manifest(padded) == FULL


def test_manifest_over_the_size_limit_is_refused_before_parsing() -> None:
    body = FULL.to_json()
    padded = body + b" " * (envelope.MAX_MANIFEST_BYTES - len(body) + 1)
    with pytest.raises(InputRefused, match="larger than"):
        parse_manifest(padded)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"{", b"\xff\xfe{}", b'{"schema": "gateway-envelope/1"\xff}', b"NaN"],
)
def test_parse_manifest_refuses_what_is_not_utf8_json(data: bytes) -> None:
    with pytest.raises(InputRefused):
        parse_manifest(data)


@pytest.mark.parametrize(
    "document",
    [[], "gateway-envelope/1", 1, None, {}, {"schema": "gateway-envelope/2"}],
)
def test_parse_manifest_refuses_what_is_not_a_manifest_object(document: object) -> None:
    with pytest.raises(InputRefused, match="not a gateway-envelope/1 object"):
        parse_manifest(encode(document))


def _without(path: str) -> dict[str, Any]:
    document = doc()
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    del target[last]
    return document


def _with(path: str, value: object) -> dict[str, Any]:
    document = doc()
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    target[last] = value
    return document


@pytest.mark.parametrize(
    "field",
    [
        "schema",
        "package_id",
        "kind",
        "sender",
        "recipient",
        "created_at",
        "payload",
        "payload.name",
        "payload.size",
        "payload.sha256",
        "sender.id",
        "sender.key",
        "recipient.key",
    ],
)
def test_parse_manifest_refuses_a_missing_field(field: str) -> None:
    with pytest.raises(InputRefused):
        parse_manifest(encode(_without(field)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("extra", "x"),
        ("payload.extra", 1),
        ("sender.name", "ACRO"),
    ],
)
def test_parse_manifest_refuses_unknown_fields(field: str, value: object) -> None:
    with pytest.raises(InputRefused):
        parse_manifest(encode(_with(field, value)))


def test_unknown_top_level_field_is_named_in_the_error() -> None:
    with pytest.raises(InputRefused, match="unknown fields: extra"):
        parse_manifest(encode(_with("extra", "x")))


BAD_VALUES = [
    ("package_id", "GB-ACRO"),
    ("package_id", 1),
    ("package_id", ""),
    ("kind", "Conviction"),
    ("kind", ["conviction"]),
    ("sender", "GB-ACRO"),
    ("sender.id", "gb-acro"),
    ("sender.key", SENDER_KEY.lower()),
    ("sender.key", SENDER_KEY[:-1]),
    ("sender.key", SENDER_KEY + "0"),
    ("sender.key", "G" * 40),
    ("recipient.key", 1234),
    ("recipient.id", "US-NCB "),
    ("created_at", "2026-11-28 18:00:00Z"),
    ("created_at", "2026-11-28T18:00:00"),
    ("created_at", "2026-11-28T18:00:00+00:00"),
    ("created_at", "2026-11-28T18:00:00.123Z"),
    ("created_at", "2026-11-28"),
    ("created_at", "2026-11-28T18:00:00Z\n"),
    ("created_at", ""),
    ("created_at", 1764352800),
    ("payload", "notice.xml"),
    ("payload.size", "9"),
    ("payload.size", -1),
    ("payload.size", True),
    ("payload.size", False),
    ("payload.size", 9.0),
    ("payload.size", None),
    ("payload.sha256", FULL.payload.sha256.upper()),
    ("payload.sha256", FULL.payload.sha256[:-1]),
    ("payload.sha256", None),
    ("payload.name", "a/b"),
    ("payload.name", "../notice.xml"),
    ("payload.name", ".."),
    ("payload.name", ".notice.xml"),
    ("payload.name", "notice.xml.part"),
    ("payload.name", "line\nbreak"),
    ("payload.name", ""),
    ("payload.name", "x" * 201),
    ("reference", ""),
    ("reference", "x" * 1025),
    ("reference", 17),
    ("marking", ["OFFICIAL"]),
    ("in_reply_to", "not a package id"),
    ("in_reply_to", ""),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_parse_manifest_refuses_a_bad_value(field: str, value: object) -> None:
    with pytest.raises(InputRefused):
        parse_manifest(encode(_with(field, value)))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(5, id="number"),
        pytest.param(None, id="null"),
        pytest.param(True, id="true"),
        pytest.param(["notice.xml"], id="list"),
    ],
)
def test_parse_manifest_refuses_a_payload_name_that_is_not_a_string(value: object) -> None:
    """A strict parser must not turn 5 into the file name "5" or null into "None"."""
    with pytest.raises(InputRefused):
        parse_manifest(encode(_with("payload.name", value)))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("２０２６-１１-２８T１８:００:００Z", id="fullwidth digits"),
        pytest.param("٢٠٢٦-١١-٢٨T١٨:٠٠:٠٠Z", id="Arabic-Indic digits"),
        pytest.param("2026-13-01T18:00:00Z", id="month 13"),
        pytest.param("2026-02-30T18:00:00Z", id="30 February"),
        pytest.param("2026-11-28T25:61:61Z", id="hour 25"),
    ],
)
def test_parse_manifest_refuses_a_created_at_that_is_no_utc_time(value: str) -> None:
    with pytest.raises(InputRefused, match="created_at"):
        parse_manifest(encode(_with("created_at", value)))


def test_parse_manifest_accepts_null_for_an_absent_optional_field() -> None:
    assert parse_manifest(encode(_with("reference", None))) == dataclasses.replace(
        FULL, reference=None
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"[" * 50_000, id="nested deeper than the recursion limit"),
        pytest.param(b'{"schema": ' + b"9" * 5_000 + b"}", id="integer of 5000 digits"),
    ],
)
def test_parse_manifest_refuses_hostile_json_as_refused_input(data: bytes) -> None:
    """Both fit in MAX_MANIFEST_BYTES; neither may escape as another exception."""
    assert len(data) <= envelope.MAX_MANIFEST_BYTES
    with pytest.raises(InputRefused):
        parse_manifest(data)


@PROPERTY
@given(st.binary(max_size=2048))
def test_parse_manifest_of_arbitrary_bytes_raises_only_input_refused(data: bytes) -> None:
    with contextlib.suppress(InputRefused):
        parse_manifest(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
FIELDS = [
    "schema",
    "package_id",
    "kind",
    "sender",
    "recipient",
    "created_at",
    "payload",
    "reference",
    "marking",
    "in_reply_to",
    "extra",
    "payload.name",
    "payload.size",
    "payload.sha256",
    "sender.id",
    "sender.key",
    "recipient.id",
    "recipient.key",
]


@PROPERTY
@given(st.sampled_from(FIELDS), json_values)
def test_parse_manifest_is_strict_and_lossless(field: str, value: object) -> None:
    """Spoil one field with any JSON value: the parser refuses it with InputRefused, or what
    it accepts serialises back to the very same document (no silent conversion)."""
    document = _with(field, value)
    try:
        manifest = parse_manifest(encode(document))
    except InputRefused:
        return
    expected = {k: v for k, v in document.items() if v is not None}
    assert json.loads(manifest.to_json()) == expected


# --- the tar ----------------------------------------------------------------------------------


def stream(manifest: Manifest, data: bytes) -> bytes:
    return b"".join(tar_chunks(manifest, io.BytesIO(data), MTIME))


def assert_valid_tar(blob: bytes, manifest: Manifest, data: bytes) -> None:
    """Exactly `manifest.json` then `payload/<name>`, both regular files with these bytes."""
    assert len(blob) % tarfile.BLOCKSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["manifest.json", f"payload/{manifest.payload.name}"]
        assert all(m.isreg() and m.mtime == MTIME and m.mode == 0o600 for m in members)
        head, body = (tar.extractfile(m) for m in members)
        assert head is not None and body is not None
        assert parse_manifest(head.read()) == manifest
        assert members[1].size == len(data)
        assert body.read() == data
    # the same through the streaming reader, as a receiver reads it from GnuPG's stdout
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tar:
        assert [m.name for m in tar] == ["manifest.json", f"payload/{manifest.payload.name}"]


def pattern(size: int) -> bytes:
    """Deterministic bytes that differ from block to block."""
    out = hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1)
    return bytes(b ^ (i % 251) for i, b in enumerate(out[:size]))


@pytest.mark.parametrize(
    "size",
    [0, 1, 511, 512, 513, 1024, envelope.CHUNK - 1, envelope.CHUNK, 3 * MIB, 3 * MIB + 1],
)
def test_tar_holds_manifest_then_payload(size: int) -> None:
    data = pattern(size)
    manifest = manifest_for(data)
    assert_valid_tar(stream(manifest, data), manifest, data)


@pytest.mark.parametrize(
    "name",
    [
        "n" * 150 + ".xml",  # over the 100 bytes of a ustar name: needs a PAX header
        "é" * 98 + ".xml",  # 200 bytes of UTF-8
        "x" * 200,
        "dossier é.xml",
        "日本語の通知.pdf",
    ],
)
def test_tar_keeps_long_and_non_ascii_names(name: str) -> None:
    data = b"payload"
    manifest = manifest_for(data, name=name)
    blob = stream(manifest, data)
    assert_valid_tar(blob, manifest, data)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
        payload = tar.getmembers()[1]
    # ustar holds 100 bytes of ASCII name; the rest must come from a PAX header
    assert payload.pax_headers["path"] == f"payload/{name}"


@PROPERTY
@given(st.binary(max_size=3000), payload_names)
def test_tar_round_trips_any_payload(data: bytes, name: str) -> None:
    manifest = manifest_for(data, name=name)
    assert_valid_tar(stream(manifest, data), manifest, data)


def _tampered() -> list[tuple[str, bytes, bytes]]:
    small, big = pattern(1000), pattern(envelope.CHUNK + 100)
    flipped = bytearray(big)
    flipped[envelope.CHUNK + 50] ^= 1
    return [
        ("shorter", small, small[:-1]),
        ("empty", small, b""),
        ("longer", small, small + b"x"),
        ("longer past a chunk", small, pattern(envelope.CHUNK + 1)),
        ("changed", small, small[:-1] + bytes([small[-1] ^ 1])),
        ("changed in a later chunk", big, bytes(flipped)),
        ("longer by a whole chunk", big, big + pattern(envelope.CHUNK)),
        ("not empty", b"", b"x"),
    ]


@pytest.mark.parametrize(
    ("declared", "actual"),
    [pytest.param(d, a, id=label) for label, d, a in _tampered()],
)
def test_tar_stream_fails_when_payload_differs_from_manifest(
    declared: bytes, actual: bytes
) -> None:
    manifest = manifest_for(declared)
    with pytest.raises(SpoolDamaged, match="payload changed"):
        stream(manifest, actual)


@PROPERTY
@given(st.binary(max_size=600), st.binary(max_size=600))
def test_tar_stream_fails_for_any_payload_but_the_declared_one(
    declared: bytes, actual: bytes
) -> None:
    manifest = manifest_for(declared)
    if declared == actual:
        assert_valid_tar(stream(manifest, actual), manifest, actual)
    else:
        with pytest.raises(SpoolDamaged):
            stream(manifest, actual)


def test_tar_streams_without_reading_the_whole_payload_at_once() -> None:
    """Sealing 1 GiB must not need 1 GiB of memory: no read asks for more than a chunk."""

    class Recording(io.BytesIO):
        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.asked: list[int] = []

        def read(self, size: int | None = -1) -> bytes:
            self.asked.append(-1 if size is None else size)
            return super().read(size)

    data = pattern(3 * MIB)
    payload = Recording(data)
    chunks = list(tar_chunks(manifest_for(data), payload, MTIME))
    assert payload.asked and all(0 < n <= envelope.CHUNK for n in payload.asked)
    assert max(len(c) for c in chunks) <= envelope.CHUNK + 2 * tarfile.BLOCKSIZE


# --- ChunkReader ------------------------------------------------------------------------------


def read_in_steps(chunks: Iterator[bytes], size: int) -> bytes:
    reader = io.BufferedReader(ChunkReader(chunks))
    out = bytearray()
    while piece := reader.read(size):
        assert len(piece) <= size
        out += piece
    return bytes(out)


@pytest.mark.parametrize(
    ("size", "payload_size"),
    [(1, 20_000), (7, 3 * MIB), (4096, 3 * MIB), (MIB, 3 * MIB), (MIB + 3, 3 * MIB + 1)],
)
def test_chunk_reader_gives_the_same_bytes_whatever_the_read_size(
    size: int, payload_size: int
) -> None:
    data = pattern(payload_size)
    manifest = manifest_for(data)
    expected = stream(manifest, data)
    assert read_in_steps(tar_chunks(manifest, io.BytesIO(data), MTIME), size) == expected


def test_chunk_reader_read_all_and_readinto() -> None:
    assert ChunkReader(iter([b"ab", b"", b"cde", b""])).read() == b"abcde"
    reader = ChunkReader(iter([b"", b"abc", b"defg"]))
    target = bytearray(5)
    assert reader.readable()
    assert reader.readinto(target) == 3
    assert bytes(target[:3]) == b"abc"
    assert reader.readinto(target) == 4
    assert bytes(target[:4]) == b"defg"
    assert reader.readinto(target) == 0
    assert ChunkReader(iter([])).read() == b""


@PROPERTY
@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(1, 64))
def test_chunk_reader_concatenates_any_chunks(chunks: list[bytes], size: int) -> None:
    assert read_in_steps(iter(chunks), size) == b"".join(chunks)


def test_chunk_reader_passes_on_a_payload_that_changed() -> None:
    data = pattern(3 * MIB)
    manifest = manifest_for(data)
    reader = io.BufferedReader(ChunkReader(tar_chunks(manifest, io.BytesIO(data[:-1]), MTIME)))
    with pytest.raises(SpoolDamaged, match="payload changed"):
        while reader.read(4096):
            pass
