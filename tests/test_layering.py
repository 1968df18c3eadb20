"""The layering rules of STYLE.md, checked rather than remembered.

Only one module may import each foreign library, so that its traps are handled in one
place; nothing may trust an unknown SSH host key, load unsafely or run a shell.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "gateway"

#: library -> the only modules allowed to import it
OWNERS = {
    "gnupg": {"gateway/adapters/gpg.py"},
    "paramiko": {
        "gateway/adapters/sftp.py",
        "gateway/adapters/dropserver.py",
    },  # client side, server side
    "watchdog": {"gateway/adapters/watch.py"},
    "sqlite_utils": {"gateway/adapters/ledger.py"},
    "sqlite3": {"gateway/adapters/ledger.py"},
    "fcntl": {"gateway/pipeline/daemon.py"},
    "click": {path.relative_to(SOURCE.parent).as_posix() for path in (SOURCE / "cli").glob("*.py")},
}


def imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


MODULES = sorted(SOURCE.rglob("*.py"))


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_library_is_imported_in_its_one_place(library: str) -> None:
    users = {p.relative_to(SOURCE.parent).as_posix() for p in MODULES if library in imports(p)}
    assert users <= OWNERS[library], (
        f"{library} imported outside {OWNERS[library]}: {users - OWNERS[library]}"
    )


def test_the_core_imports_no_adapter() -> None:
    """Names, envelope, lifecycle and settings are pure: no I/O library, no adapter."""
    adapters = {
        "gnupg",
        "paramiko",
        "sqlite_utils",
        "sqlite3",
        "click",
        "watchdog",
        "subprocess",
        "socket",
    }
    for name in ("names", "envelope", "lifecycle", "settings", "errors"):
        used = imports(SOURCE / f"{name}.py")
        assert not used & adapters, f"gateway/{name}.py imports {used & adapters}"
        text = (SOURCE / f"{name}.py").read_text()
        for module in re.findall(r"from gateway\.(\w+) import", text):
            assert module in {"names", "errors", "lifecycle"}, (
                f"gateway/{name}.py imports gateway.{module}"
            )


@pytest.mark.parametrize(
    "pattern",
    [r"AutoAddPolicy", r"WarningPolicy", r"load_system_host_keys", r"save_host_keys",
     r"shell\s*=\s*True", r"yaml\.load\(", r"pickle\.loads?\(", r"allow_agent\s*=\s*True"],
)  # fmt: skip
def test_no_unsafe_call_anywhere(pattern: str) -> None:
    hits = [f"{p}:{n}" for p in MODULES for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(pattern, line)]  # fmt: skip
    assert not hits, f"{pattern} used at {hits}"
