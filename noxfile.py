"""Entry points: nox -s tests | audit | gate | baseline | bench. Options after `--` pass through."""
from __future__ import annotations

import os

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
    out = args[args.index("--out") + 1]
    session.run("python", "-m", "audit", "mutants", "--out", out)


@nox.session(python=PYTHON)
def gate(session: nox.Session) -> None:
    """Run the default audit into a temporary folder and gate it against reports/baseline.json."""
    _install(session)
    out = session.create_tmp()
    session.run("python", "-m", "audit", "run", "--out", out, "--quiet", *session.posargs)
    session.run("python", "-m", "audit", "gate", "--baseline", "reports/baseline.json",
                "--results", f"{out}/results.json")


@nox.session(python=PYTHON)
def baseline(session: nox.Session) -> None:
    """Rewrite reports/ and reports/baseline.json on purpose (review the diff before committing)."""
    _install(session)
    session.run("python", "-m", "audit", "run", "--out", "reports", "--quiet")
    session.run("python", "-m", "audit", "baseline", "--results", "reports/results.json",
                "--out", "reports/baseline.json")


# glibc returns large freed blocks to the OS, so every step page-faults its activations back in:
# noise of several per cent that also depends on how many tensors a contender allocates. A warm heap
# (the usual advice for PyTorch on CPU) measures the arithmetic; it takes from us rather than gives,
# since our hooks allocate less than peft's wrappers. BENCH_MALLOC=default keeps glibc's defaults.
WARM_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**32), "MALLOC_TOP_PAD_": str(2**28)}


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """pytest-benchmark: base, ours and peft side by side, fwd and fwd+bwd; saves JSON, prints the table.

    Size and rounds via BENCH_HIDDEN, BENCH_LAYERS, BENCH_SEQ, BENCH_BATCH, BENCH_DTYPE, BENCH_DEVICE,
    BENCH_ROUNDS (see benchmarks/bench_setup.py). On CPU the timer is the process's CPU time (one
    torch thread: time the machine gives to other processes is not counted); on CUDA, wall time.
    """
    _install(session)
    out = ".benchmarks/bench.json"
    cuda = os.environ.get("BENCH_DEVICE", "cpu") != "cpu"
    timer = "time.perf_counter" if cuda else "time.process_time"
    env = {"PYTHONPATH": "benchmarks", **({} if os.environ.get("BENCH_MALLOC") == "default" else WARM_HEAP)}
    session.run("python", "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-q",
                "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name", f"--benchmark-timer={timer}",
                f"--benchmark-json={out}", *session.posargs, env=env)
    session.run("python", "benchmarks/table.py", out)
