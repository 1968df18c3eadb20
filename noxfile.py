"""Test sessions beside scripts/test.

`floors` runs the whole test suite against the lowest version of each dependency that
pyproject.toml allows (research/library-pitfalls.md, checklist item 10), in a fresh
virtual environment:

    .venv/bin/pip install nox
    .venv/bin/nox -s floors                # the whole suite
    .venv/bin/nox -s floors -- -x -k push  # arguments after -- go to pytest
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["floors"]

#: The lowest release of each dependency that pyproject.toml allows. (click's floor is
#: 8.3.1 because every sqlite-utils 4 release requires it; paramiko's is 3.5 because 3.4
#: warns on import with current cryptography, which the suite treats as an error.)
FLOORS = (
    "paramiko==3.5.0",
    "python-gnupg==0.5.1",
    "sqlite-utils==4.0",
    "watchdog==4.0.0",
    "click==8.3.1",
    "holidays==0.40",
    "python-json-logger==3.1.0",
    "prometheus-client==0.20.0",
)


@nox.session
def floors(session: nox.Session) -> None:
    """The test suite on the dependency floors."""
    session.install("-e", ".[dev]", *FLOORS)
    session.run("python", "-m", "pip", "check")
    session.run("python", "-m", "pip", "freeze")
    session.run("pytest", "-n", "auto", *session.posargs)
