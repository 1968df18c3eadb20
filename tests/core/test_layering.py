"""The layering rules of STYLE.md, checked rather than remembered.

The folders of `gateway/` are layers, lowest first; a module may import its own folder
and the folders below it, never one above. The rule is read from the folders, so a
new module is checked the day it is written. The core is pure: the standard library
only, and none of it that reaches the disk, the network, the clock or other processes.
Only one module may import each foreign library, so that its traps are handled in one
place; nothing may trust an unknown SSH host key, load unsafely or run a shell.
Test modules import what they share from tests.helpers, never from one another.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "gateway"
#: The folders of gateway/, lowest first. `gateway/__main__.py` stands above them all.
LAYERS = ("core", "adapters", "transports", "pipeline", "app", "admin", "cli")
#: Standard modules the core may not use: they reach the disk, the network, the clock,
#: other processes or threads. The core decides; adapters do.
NAMES = (*LAYERS, "gateway")
IMPURE = {"os", "subprocess", "socket", "time", "shutil", "tempfile", "sqlite3",
          "threading", "fcntl", "tomllib", "glob", "signal", "select", "asyncio", "logging"}  # fmt: skip


def imports(text: str) -> set[str]:
    """Every module name an import statement in `text` names (for `from gateway import x`,
    `gateway.x`)."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "gateway":
                found |= {f"gateway.{alias.name}" for alias in node.names}
    return found


def layer(module: str) -> int | None:
    """The rank of a gateway module's layer, or None for a module outside gateway."""
    parts = module.split(".")
    if parts[0] != "gateway":
        return None
    if len(parts) == 1:
        return 0  # the package itself: its __init__ holds nothing but a docstring
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)  # gateway.__main__


def violations(path: str, text: str) -> list[str]:
    """What a module at `path` (e.g. gateway/core/names.py) imports against the rules."""
    own = layer(path.removesuffix(".py").replace("/", "."))
    assert own is not None
    found = []
    for module in sorted(imports(text)):
        rank = layer(module)
        if rank is not None and rank > own:
            found.append(f"{path} ({NAMES[own]}) imports {module} ({NAMES[rank]})")
        if own == 0 and rank is None:
            top = module.split(".")[0]
            if top not in sys.stdlib_module_names:
                found.append(f"{path} (core) imports the outside library {module}")
            elif top in IMPURE:
                found.append(f"{path} (core) imports {module}, which does I/O or reads time")
    return found


MODULES = sorted(SOURCE.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(SOURCE.parent).as_posix()


def test_every_module_lives_in_a_layer_folder() -> None:
    loose = [rel(p) for p in MODULES if p.parent == SOURCE and p.name not in ("__init__.py", "__main__.py")]  # fmt: skip
    assert not loose, f"put these in one of the folders {LAYERS}: {loose}"
    folders = {p.name for p in SOURCE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS), f"folders {folders ^ set(LAYERS)} are not in LAYERS"


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_each_module_imports_only_its_layer_and_those_below(path: Path) -> None:
    assert violations(rel(path), path.read_text()) == []


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("gateway/core/names.py", "from gateway.pipeline.steps import Steps",
         "gateway/core/names.py (core) imports gateway.pipeline.steps (pipeline)"),
        ("gateway/adapters/ledger.py", "from gateway import transports",
         "gateway/adapters/ledger.py (adapters) imports gateway.transports (transports)"),
        ("gateway/pipeline/steps.py", "import gateway.app.gateway",
         "gateway/pipeline/steps.py (pipeline) imports gateway.app.gateway (app)"),
        ("gateway/core/names.py", "import time", "gateway/core/names.py (core) imports time, which"),
        ("gateway/core/model.py", "import paramiko", "gateway/core/model.py (core) imports the outside"),
    ],
)  # fmt: skip
def test_the_check_catches_an_import_from_above(path: str, text: str, expected: str) -> None:
    """The rule bites: each of these, written into a module, fails the test above."""
    found = violations(path, text)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_the_check_allows_imports_from_below_and_beside() -> None:
    text = "from gateway.core.names import KINDS\nfrom gateway.pipeline import accept\nimport json"
    assert violations("gateway/pipeline/steps.py", text) == []


#: library -> the only modules allowed to import it
OWNERS = {
    "gnupg": {"gateway/adapters/gpg.py"},
    "paramiko": {"gateway/adapters/sftp.py", "gateway/adapters/dropserver.py"},  # client, server
    "watchdog": {"gateway/adapters/watch.py"},
    "sqlite_utils": {"gateway/adapters/ledger.py", "gateway/adapters/schema.py"},
    "sqlite3": {"gateway/adapters/ledger.py"},
    "fcntl": {"gateway/adapters/lock.py"},
    "holidays": {"gateway/adapters/calendar.py"},
    "pythonjsonlogger": {"gateway/adapters/logs.py"},
    "prometheus_client": {"gateway/adapters/metrics.py"},
    "click": {rel(path) for path in (SOURCE / "cli").glob("*.py")},
}


@functools.cache
def top_imports(path: Path) -> frozenset[str]:
    """The top-level names of what the module at `path` imports (read once per run)."""
    return frozenset(m.split(".")[0] for m in imports(path.read_text()))


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_library_is_imported_in_its_one_place(library: str) -> None:
    users = {rel(p) for p in MODULES if library in top_imports(p)}
    assert users <= OWNERS[library], (
        f"{library} imported outside {OWNERS[library]}: {users - OWNERS[library]}"
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


def test_the_clock_is_read_in_one_place() -> None:
    """Time comes from the clock the composition root hands down (gateway.core.clock)."""
    reads = re.compile(r"\btime\.(time|monotonic|sleep)\(|datetime\.now\(|date\.today\(")
    allowed = {"gateway/adapters/clock.py"}
    hits = [f"{rel(p)}:{n}: {line.strip()}" for p in MODULES if rel(p) not in allowed
            for n, line in enumerate(p.read_text().splitlines(), 1) if reads.search(line)]  # fmt: skip
    assert not hits, "read the injected clock instead:\n" + "\n".join(hits)


# -- the tests themselves -----------------------------------------------------------------

TESTS = SOURCE.parent / "tests"


def imported_test_modules(text: str) -> set[str]:
    """The test modules (`test_*`) an import statement in `text` names, however spelled."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            joined = "." if node.module else ""
            names = [base, *(f"{base}{joined}{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names if name.rsplit(".", 1)[-1].startswith("test_")}
    return found


@pytest.mark.parametrize(
    "path", sorted(TESTS.rglob("test_*.py")), ids=lambda p: p.relative_to(TESTS).as_posix()
)
def test_no_test_module_imports_another(path: Path) -> None:
    """What tests share lives in tests.helpers (or the harnesses tests.sshd, tests.faultproxy)."""
    assert imported_test_modules(path.read_text()) == set(), "move it to tests/helpers.py"


@pytest.mark.parametrize(
    "text",
    ["from tests.e2e.test_daemon import wait_for", "from tests.e2e import test_daemon",
     "import tests.pipeline.test_inbound", "from .test_inbound import Desk",
     "from . import test_cli"],
)  # fmt: skip
def test_the_check_catches_a_test_module_imported(text: str) -> None:
    assert imported_test_modules(text), text
    assert imported_test_modules("from tests.helpers import wait_for\nimport tests.sshd") == set()
