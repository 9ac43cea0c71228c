"""Entry points: nox -s tests | audit | gate | baseline | bench. Options after `--` pass through."""
from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

PYTHON = "3.11"


def _install(session: nox.Session) -> None:
    # torch first, pinned to the local CPU build: an unpinned torch would pull a multi-GB CUDA wheel.
    session.install("-c", "constraints.txt", "torch")
    session.install("-c", "constraints.txt", "-e", ".[audit,dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest exit code 5, no tests collected, fails the session)."""
    _install(session)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def audit(session: nox.Session) -> None:
    """Run the default audit on the embedded tiny models and write reports/ (options pass through)."""
    _install(session)
    args = session.posargs or []
    if "--out" not in args:
        args = ["--out", "reports", *args]
    session.run("python", "-m", "audit", "run", *args)
