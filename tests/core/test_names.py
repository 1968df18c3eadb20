"""Names of the contract (SPEC section 2 and 3): authority ids, package ids, payload names."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import names
from gateway.core.errors import InputRefused, UsageError

PROPERTY = settings(max_examples=200, deadline=None, database=None)

AUTHORITY_RE = re.compile(r"[A-Z]{2}-[A-Z0-9]{1,16}")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

authorities = st.from_regex(AUTHORITY_RE, fullmatch=True)
#: Millisecond timestamps that fit the 48 bits of a ULID.
millis = st.integers(min_value=0, max_value=2**48 - 1)
randomness = st.binary(min_size=10, max_size=10)
#: Any text, lone surrogates included (what os.fsdecode makes of a non-UTF-8 file name).
any_text = st.text(st.characters(exclude_categories=()))


def at(ms: int) -> float:
    """A time in seconds that lies inside millisecond `ms`, safe from float rounding."""
    return ms / 1000 + 0.0005


def ulid_value(ulid: str) -> int:
    """Decode a Crockford base32 ULID into its 128-bit value."""
    value = 0
    for char in ulid:
        value = value * 32 + CROCKFORD.index(char)
    return value


# --- authority ids ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["GB-ACRO", "US-NCB", "AU-AFP", "DE-1", "FR-" + "A1" * 8])
def test_authority_id_accepts_valid_ids(text: str) -> None:
    assert names.authority_id(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "GB",
        "GB-",
        "gb-acro",
        "GB-acro",
        "G-ACRO",
        "GBR-ACRO",
        "GB_ACRO",
        "GB ACRO",
        "GB-ACRO-X",
        "GB-" + "A" * 17,
        "GB-ACRO\n",
        " GB-ACRO",
        "GB-ÄCRO",
        "ＧＢ-ACRO",  # fullwidth letters
        "GB-١٢٣",  # Arabic-Indic digits
    ],
)
def test_authority_id_refuses_invalid_ids(text: str) -> None:
    with pytest.raises(UsageError, match="not an authority id"):
        names.authority_id(text)


@PROPERTY
@given(authorities)
def test_authority_id_accepts_everything_the_spec_pattern_allows(text: str) -> None:
    assert names.authority_id(text) == text


@PROPERTY
@given(st.one_of(any_text, st.from_regex(r"[A-Z]{2}-[A-Z0-9]{1,16}")))
def test_authority_id_either_returns_a_matching_id_or_raises_usage_error(text: str) -> None:
    """The second strategy puts valid ids inside arbitrary text, which must be refused."""
    try:
        result = names.authority_id(text)
    except UsageError:
        assert not AUTHORITY_RE.fullmatch(text)
    else:
        assert result == text
        assert AUTHORITY_RE.fullmatch(result)


# --- kinds -----------------------------------------------------------------------------


def test_kinds_are_the_four_of_the_spec() -> None:
    assert set(names.KINDS) == {"conviction", "extradition", "request", "response"}
    for kind in names.KINDS:
        assert names.kind(kind) == kind


@pytest.mark.parametrize("text", ["", "Conviction", "conviction ", "NOT", "receipt"])
def test_kind_refuses_anything_else(text: str) -> None:
    with pytest.raises(UsageError, match="not a package kind"):
        names.kind(text)


# --- ULIDs and package ids --------------------------------------------------------------


def test_new_ulid_matches_the_ulid_spec_example() -> None:
    """ulid/spec: 1469918176385 ms encodes as 01ARYZ6S41."""
    assert names.new_ulid(1469918176.385, bytes(10)) == "01ARYZ6S41" + "0" * 16
    assert names.new_ulid(0, bytes(10)) == "0" * 26
    assert names.new_ulid(0, b"\xff" * 10) == "0" * 10 + "Z" * 16


@PROPERTY
@given(millis, randomness)
def test_new_ulid_is_26_crockford_chars_holding_time_then_randomness(ms: int, rand: bytes) -> None:
    ulid = names.new_ulid(at(ms), rand)
    assert len(ulid) == 26
    assert set(ulid) <= set(CROCKFORD)
    assert ulid[0] in "01234567"
    assert ulid_value(ulid) == (ms << 80) | int.from_bytes(rand, "big")


def test_new_ulid_holds_the_time_given_and_fresh_randomness() -> None:
    first, second = names.new_ulid(1765000000.123), names.new_ulid(1765000000.123)
    assert ulid_value(first) >> 80 == ulid_value(second) >> 80 == 1765000000123
    assert first != second


@PROPERTY
@given(st.lists(st.tuples(millis, randomness), min_size=2, max_size=20, unique_by=lambda t: t[0]))
def test_ulids_made_at_increasing_times_sort_in_that_order(stamps: list[tuple[int, bytes]]) -> None:
    """Randomness must never outweigh the time: sort by time, the strings sort the same."""
    stamps.sort(key=lambda t: t[0])
    ulids = [names.new_ulid(at(ms), rand) for ms, rand in stamps]
    assert sorted(ulids) == ulids


def test_package_ids_made_one_after_another_sort_in_that_order() -> None:
    pids = [names.new_package_id("GB-ACRO", 1765000000 + n / 1000) for n in range(20)]
    assert sorted(pids) == pids
    assert len(set(pids)) == len(pids)


@PROPERTY
@given(authorities)
def test_new_package_id_is_accepted_and_names_its_sender(sender: str) -> None:
    pid = names.new_package_id(sender, 1765000000.0)
    assert names.package_id(pid) == pid
    assert names.package_sender(pid) == sender
    assert pid.startswith(sender + "-")
    ulid = pid.removeprefix(sender + "-")
    assert len(ulid) == 26
    assert set(ulid) <= set(CROCKFORD)


@PROPERTY
@given(authorities, millis, randomness)
def test_package_sender_round_trips(sender: str, ms: int, rand: bytes) -> None:
    pid = f"{sender}-{names.new_ulid(at(ms), rand)}"
    assert names.package_id(pid) == pid
    assert names.package_sender(pid) == sender


def test_new_package_id_refuses_an_invalid_sender() -> None:
    with pytest.raises(UsageError, match="not an authority id"):
        names.new_package_id("gb-acro", 0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "GB-ACRO",
        "01JDQ8N5V3K7Q2Y9ZC4T6W8E1M",
        "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1",  # 25 characters
        "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1MM",  # 27 characters
        "GB-ACRO-01jdq8n5v3k7q2y9zc4t6w8e1m",  # lower case
        "GB-ACRO-81JDQ8N5V3K7Q2Y9ZC4T6W8E1M",  # more than 128 bits
        "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1U",  # U is not Crockford
        "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8EIL",  # nor are I, L, O
        "GB-ACRO_01JDQ8N5V3K7Q2Y9ZC4T6W8E1M",
        "gb-acro-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M",
        "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M\n",
        "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M.pgp",
    ],
)
def test_package_id_refuses_invalid_ids(text: str) -> None:
    with pytest.raises(UsageError, match="not a package id"):
        names.package_id(text)
    with pytest.raises(UsageError, match="not a package id"):
        names.package_sender(text)


# --- wire names --------------------------------------------------------------------------


def test_wire_and_receipt_names() -> None:
    pid = "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"
    assert names.wire_name(pid) == "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M.pgp"
    assert names.receipt_name(pid) == "GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M.receipt"


@pytest.mark.parametrize("name", [names.wire_name, names.receipt_name])
@pytest.mark.parametrize("text", ["", "GB-ACRO", "../GB-ACRO-01JDQ8N5V3K7Q2Y9ZC4T6W8E1M"])
def test_wire_and_receipt_names_refuse_invalid_package_ids(
    name: Callable[[str], str], text: str
) -> None:
    with pytest.raises(UsageError, match="not a package id"):
        name(text)


# --- temporary names and payload names ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "temporary"),
    [
        ("notice.xml", False),
        ("part", False),
        ("notice.xml.part", True),
        ("notice.tmp", True),
        ("notice.partial", True),
        ("notice.xml~", True),
        (".notice.xml", True),
        (".", True),
        ("..", True),
        ("notice.part.xml", False),
        ("notice~.xml", False),
    ],
)
def test_is_temporary(name: str, temporary: bool) -> None:
    assert names.is_temporary(name) is temporary


ACCEPTED_NAMES = [
    "notice.xml",
    "dossier é.xml",
    "日本語の通知.pdf",
    "Überstellung (2).txt",
    "a",
    "no extension",
    "x" * 200,  # exactly 200 bytes
    "é" * 100,  # 100 characters, 200 bytes
    "name.with.dots",
    "-dash-first",
]


@pytest.mark.parametrize("name", ACCEPTED_NAMES)
def test_payload_name_accepts_ordinary_names(name: str) -> None:
    assert names.payload_name(name) == name
    assert names.payload_name(name.encode("utf-8")) == name


REFUSED_NAMES = {
    "": "1 to 200 bytes",
    "x" * 201: "1 to 200 bytes",
    "é" * 100 + "x": "1 to 200 bytes",  # 101 characters, 201 bytes
    "/": "not a path",
    "a/b": "not a path",
    "/etc/passwd": "not a path",
    "../x": "not a path",
    ".": "not a path",
    "..": "not a path",
    ".hidden": "dot-file",
    ".part": "dot-file",
    "notice.part": "temporary",
    "notice.tmp": "temporary",
    "notice.partial": "temporary",
    "notice.xml~": "temporary",
    "a\nb": "control",
    "a\rb": "control",
    "a\tb": "control",
    "a\x00b": "control",
    "\x1b[31mred": "control",
    "a\x7fb": "control",
    "a\u200bb": "invisible",  # zero-width space
    "a\u202eb": "invisible",  # right-to-left override
    "a\u00a0b": "invisible",  # no-break space
    "a\u2028b": "invisible",  # line separator
}


@pytest.mark.parametrize(("name", "why"), REFUSED_NAMES.items())
def test_payload_name_refuses(name: str, why: str) -> None:
    with pytest.raises(InputRefused, match=why):
        names.payload_name(name)
    with pytest.raises(InputRefused, match=why):
        names.payload_name(name.encode("utf-8"))


@pytest.mark.parametrize("raw", [b"\xff.xml", b"caf\xe9.xml", b"\xc3", b"\xed\xa0\x80.xml"])
def test_payload_name_refuses_bytes_that_are_not_utf8(raw: bytes) -> None:
    with pytest.raises(InputRefused, match="not UTF-8"):
        names.payload_name(raw)


def test_payload_name_refuses_text_with_lone_surrogates() -> None:
    """What os.fsdecode gives for a non-UTF-8 name on disk."""
    with pytest.raises(InputRefused, match="not UTF-8"):
        names.payload_name(b"caf\xe9.xml".decode("utf-8", "surrogateescape"))


def _check_payload_name(raw: str | bytes) -> None:
    try:
        result = names.payload_name(raw)
    except InputRefused:
        return
    assert result == (raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    assert 1 <= len(result.encode("utf-8")) <= names.MAX_NAME_BYTES
    assert "/" not in result
    assert result not in (".", "..")
    assert not names.is_temporary(result)
    assert all(c.isprintable() for c in result)


@PROPERTY
@given(any_text)
def test_payload_name_of_any_text_is_that_name_or_usage_error(raw: str) -> None:
    _check_payload_name(raw)


@PROPERTY
@given(st.binary(max_size=300))
def test_payload_name_of_any_bytes_is_that_name_or_usage_error(raw: bytes) -> None:
    _check_payload_name(raw)


#: Printable characters other than '/', any script.
_name_chars = st.characters(categories=("L", "M", "N", "P", "S"), exclude_characters="/")


@PROPERTY
@given(st.text(_name_chars, min_size=1, max_size=50).filter(lambda s: not names.is_temporary(s)))
def test_payload_name_accepts_printable_plain_names(name: str) -> None:
    assert names.payload_name(name) == name
    assert names.payload_name(name.encode("utf-8")) == name


def test_the_manifests_name_is_no_payloads() -> None:
    """The gateway writes manifest.json beside the payload in spool/inbound: reserved."""
    with pytest.raises(InputRefused, match=r"manifest\.json is the gateway's own"):
        names.payload_name("manifest.json")
    assert names.payload_name("manifest.json.xml") == "manifest.json.xml"
