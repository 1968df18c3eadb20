"""The drop server's path jail: what a client path may name, and that nothing else is reachable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.jail import Jail, Location, OutsideJail, resolve

ROOT = Path("/srv/gw/spool/mailbox/AU-AFP")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", Location("root")),
        ("", Location("root")),
        (".", Location("root")),
        ("//./", Location("root")),
        ("download", Location("download")),
        ("/download/", Location("download")),
        ("/./upload/.", Location("upload")),
        ("/upload/x.pgp", Location("upload", "x.pgp")),
        ("upload/x", Location("upload", "x")),
        ("//download//a b.pgp", Location("download", "a b.pgp")),
        ("/upload/.x.part", Location("upload", ".x.part")),
        ("/upload/notice é.xml", Location("upload", "notice é.xml")),
        ("/upload/" + "x" * 200, Location("upload", "x" * 200)),
    ],
)
def test_allowed_shapes(path: str, expected: Location) -> None:
    """The root, the two folders, and plain names directly inside them."""
    assert resolve(path) == expected
    assert resolve(expected.path) == expected, "the client's view of a place resolves to it"


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "/..",
        "../download",
        "/download/..",
        "/download/../upload/x",
        "/upload/../../etc/passwd",
        "/etc/passwd",
        "/keys",
        "/download/a/b",
        "/Download/x",
        "/upload/a\0b",
        "/upload/a\nb",
        "/upload/a\rb",
        "/upload/a\tb",
        "/upload/a\x1bb",
        "/upload/a\x7fb",
        "/upload/a\x85b",
        "/upload/a\\b",
        "\\download\\x",
        "/upload/a\u202eb",
        "/upload/a\u200bb",
        "/upload/a\u00a0b",
        "/upload/a\ud800b",
        "/upload/" + "x" * 201,
        "/upload/" + "é" * 101,
        "/download/" + "./" * 508 + "x",  # 1025 characters
    ],
)
def test_refused(path: str) -> None:
    """`..`, other places, nested names, odd characters and overlong names raise OutsideJail."""
    with pytest.raises(OutsideJail):
        resolve(path)


def test_host_path_joins_one_checked_name() -> None:
    """Only a file location or a folder maps to the host; the root does not."""
    jail = Jail(ROOT)
    assert jail.host_path(Location("download")) == ROOT / "download"
    assert jail.host_path(Location("upload", "x.pgp")) == ROOT / "upload" / "x.pgp"
    with pytest.raises(OutsideJail):
        jail.host_path(Location("root"))


SEGMENTS = ["..", ".", "", "download", "upload", "x", "/", "\x00", "a/b", "...", "\\", "\n"]


def check(path: str) -> None:
    """`path` resolves to the mailbox, a folder of it, or a plain name in one; or is refused."""
    try:
        where = resolve(path)
    except OutsideJail:
        return
    assert resolve(where.path) == where
    if where.area == "root":
        assert where.name is None
        return
    host = Jail(ROOT).host_path(where)
    assert os.path.commonpath([host, ROOT]) == str(ROOT)
    assert os.path.normpath(host) == str(host), "no `.` or `..` left in the host path"
    folders = (ROOT / "download", ROOT / "upload")
    assert host in folders or host.parent in folders
    if where.name is not None:
        assert host.name == where.name
        assert len(where.name.encode("utf-8", "surrogatepass")) <= 200


@given(st.text(st.characters(exclude_categories=())))
def test_any_text_stays_in_the_mailbox(path: str) -> None:
    """Any text at all, surrogates included."""
    check(path)


@given(st.lists(st.sampled_from(SEGMENTS), max_size=8), st.booleans())
def test_any_segments_stay_in_the_mailbox(segments: list[str], absolute: bool) -> None:
    """Paths built from the troublesome pieces."""
    check(("/" if absolute else "") + "/".join(segments))


@given(st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=5), max_size=6))
def test_mixed_segments_stay_in_the_mailbox(segments: list[str]) -> None:
    """Troublesome pieces mixed with arbitrary short names."""
    check("/".join(segments))
