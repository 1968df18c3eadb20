"""What `gateway.adapters.spool.entries` finds in a real outbound folder (SPEC section 3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.adapters.spool import Entry, entries


def listing(outbound: Path) -> list[tuple[str, str | None, str | None, bool]]:
    """(path relative to outbound, partner, kind, regular) of every entry, in order."""
    return [
        (e.path.relative_to(outbound).as_posix(), e.partner, e.kind, e.regular)
        for e in entries(outbound)
    ]


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def outbound(tmp_path: Path) -> Path:
    path = tmp_path / "spool" / "outbound"
    path.mkdir(parents=True)
    return path


def test_missing_or_empty_outbound_lists_nothing(tmp_path: Path, outbound: Path) -> None:
    assert list(entries(tmp_path / "nowhere")) == []
    assert list(entries(outbound)) == []
    (outbound / "US-NCB" / "conviction").mkdir(parents=True)
    (outbound / "US-NCB" / "request").mkdir()
    assert list(entries(outbound)) == []


def test_files_in_kind_folders_are_listed_with_partner_and_kind(outbound: Path) -> None:
    touch(outbound / "US-NCB" / "conviction" / "b.xml")
    touch(outbound / "US-NCB" / "conviction" / "a.xml")
    touch(outbound / "US-NCB" / "request" / "dossier é.xml")
    touch(outbound / "DE-BKA" / "response" / "c.xml")
    assert listing(outbound) == [
        ("DE-BKA/response/c.xml", "DE-BKA", "response", True),
        ("US-NCB/conviction/a.xml", "US-NCB", "conviction", True),
        ("US-NCB/conviction/b.xml", "US-NCB", "conviction", True),
        ("US-NCB/request/dossier é.xml", "US-NCB", "request", True),
    ]


def test_entry_holds_the_lstat_of_the_file(outbound: Path) -> None:
    path = touch(outbound / "US-NCB" / "conviction" / "a.xml", b"12345")
    [entry] = entries(outbound)
    assert entry.path == path
    assert entry.stat.st_size == 5
    assert entry.stat.st_ino == os.lstat(path).st_ino


@pytest.mark.parametrize("pattern", [".{}", "{}.part", "{}.tmp", "{}.partial", "{}~", ".{}.part"])
def test_temporary_names_are_skipped_at_every_level(outbound: Path, pattern: str) -> None:
    touch(outbound / pattern.format("a.xml"))  # a file directly in outbound
    touch(outbound / "US-NCB" / pattern.format("b.xml"))  # a file in a partner folder
    touch(outbound / "US-NCB" / "conviction" / pattern.format("c.xml"))  # in a kind folder
    touch(outbound / pattern.format("DE-BKA") / "conviction" / "d.xml")  # a partner folder
    touch(outbound / "US-NCB" / pattern.format("request") / "e.xml")  # a kind folder
    touch(outbound / "US-NCB" / "conviction" / "kept.xml")
    assert listing(outbound) == [("US-NCB/conviction/kept.xml", "US-NCB", "conviction", True)]


def test_files_in_the_wrong_place_are_listed_without_partner_or_kind(outbound: Path) -> None:
    touch(outbound / "stray.xml")
    touch(outbound / "US-NCB" / "no-kind.xml")
    touch(outbound / "US-NCB" / "conviction" / "ok.xml")
    assert listing(outbound) == [
        ("US-NCB/conviction/ok.xml", "US-NCB", "conviction", True),
        ("US-NCB/no-kind.xml", "US-NCB", None, True),
        ("stray.xml", None, None, True),
    ]


def test_things_that_are_not_regular_files_are_listed_as_such(outbound: Path) -> None:
    kind = outbound / "US-NCB" / "conviction"
    target = touch(kind / "real.xml")
    (kind / "link.xml").symlink_to(target)
    (kind / "dangling.xml").symlink_to(kind / "gone.xml")
    (kind / "outside.xml").symlink_to("/etc/passwd")
    os.mkfifo(kind / "fifo.xml")
    touch(kind / "sub" / "inner.xml")  # a folder, listed but never entered
    assert listing(outbound) == [
        ("US-NCB/conviction/dangling.xml", "US-NCB", "conviction", False),
        ("US-NCB/conviction/fifo.xml", "US-NCB", "conviction", False),
        ("US-NCB/conviction/link.xml", "US-NCB", "conviction", False),
        ("US-NCB/conviction/outside.xml", "US-NCB", "conviction", False),
        ("US-NCB/conviction/real.xml", "US-NCB", "conviction", True),
        ("US-NCB/conviction/sub", "US-NCB", "conviction", False),
    ]


def test_links_to_folders_are_not_followed(outbound: Path, tmp_path: Path) -> None:
    """A symlinked partner or kind folder is an entry itself, never a way elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    touch(elsewhere / "conviction" / "secret.xml")
    (outbound / "US-NCB").mkdir()
    (outbound / "DE-BKA").symlink_to(elsewhere, target_is_directory=True)
    (outbound / "US-NCB" / "conviction").symlink_to(elsewhere / "conviction")
    assert listing(outbound) == [
        ("DE-BKA", None, None, False),
        ("US-NCB/conviction", "US-NCB", None, False),
    ]


def test_listing_is_a_fresh_snapshot_each_time(outbound: Path) -> None:
    path = touch(outbound / "US-NCB" / "conviction" / "a.xml")
    assert len(list(entries(outbound))) == 1
    path.unlink()
    assert list(entries(outbound)) == []


MTIME = 1_700_000_000.0


@pytest.mark.parametrize(
    ("age", "settle", "settled"),
    [
        (0.0, 2.0, False),
        (1.999, 2.0, False),
        (2.0, 2.0, True),
        (30.0, 2.0, True),
        (0.0, 0.0, True),
        (-5.0, 0.0, False),  # mtime in the future: still being written, or a clock jump
    ],
)
def test_settled_only_when_mtime_is_old_enough(
    outbound: Path, age: float, settle: float, settled: bool
) -> None:
    path = touch(outbound / "US-NCB" / "conviction" / "a.xml")
    os.utime(path, (MTIME, MTIME))
    [entry] = entries(outbound)
    assert entry.stat.st_mtime == MTIME
    assert entry.settled(MTIME + age, settle) is settled


def test_settled_judges_the_stat_taken_when_listed(outbound: Path) -> None:
    """A later write does not change an entry already listed; the next scan sees it."""
    path = touch(outbound / "US-NCB" / "conviction" / "a.xml")
    os.utime(path, (MTIME, MTIME))
    [old] = entries(outbound)
    os.utime(path, (MTIME + 100, MTIME + 100))
    [new] = entries(outbound)
    assert old.settled(MTIME + 10, 2)
    assert not new.settled(MTIME + 10, 2)


def test_entry_is_a_frozen_value(outbound: Path) -> None:
    touch(outbound / "US-NCB" / "conviction" / "a.xml")
    [entry] = entries(outbound)
    assert isinstance(entry, Entry)
    with pytest.raises(AttributeError):
        entry.kind = "request"  # type: ignore[misc]
