"""Entry points: nox -s tests | audit | audit-peft | audit-lycoris | audit-torchtune | gate | baseline | seeds | bench |
peft-matrix.
Options after `--` pass through.

`python -m audit run` exits 1 when a verdict is non-conformant or a row errors; the sessions that go
on to compare or render (audit, gate, baseline, seeds) accept that and let the next step decide."""
from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

PYTHON = "3.11"


def _install(session: nox.Session, extras: str = "audit,dev") -> None:
    # torch first, pinned to the local CPU build: an unpinned torch would pull a multi-GB CUDA wheel.
    session.install("-c", "constraints.txt", "torch")
    session.install("-c", "constraints.txt", "-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest exit code 5, no tests collected, fails the session). The torchtune extra is
    installed too (about 25 s), so --subject torchtune is tested; ADAPTER_AUDIT_NO_EXTRAS=1 leaves it out
    (its tests then skip, saying so)."""
    _install(session, "audit,dev" if os.environ.get("ADAPTER_AUDIT_NO_EXTRAS") == "1" else "audit,dev,torchtune")
    session.run("python", "-m", "pytest", *session.posargs)


def _audit_and_judge(session: nox.Session, args: list[str], mutants: bool) -> None:
    """Run the audit into --out (reports either way), optionally the mutant table, then let the run's
    own verdicts decide the session's exit code."""
    session.run("python", "-m", "audit", "run", *args, success_codes=[0, 1])  # reports either way
    out = args[args.index("--out") + 1]
    if mutants:
        session.run("python", "-m", "audit", "mutants", "--out", out)
    session.run("python", "-c", "import json, sys; from audit.cli import run_exit_code; "
                f"d = json.load(open({os.path.join(out, 'results.json')!r})); "
                "code = run_exit_code(d['rows'], d['verdicts']); "
                "print('audit: a verdict is non-conformant or a row errored; see SUMMARY.md') if code else None; "
                "sys.exit(code)")


@nox.session(python=PYTHON)
def audit(session: nox.Session) -> None:
    """Run the default audit on the embedded tiny models and write reports/ (options pass through)."""
    _install(session)
    args = session.posargs or []
    if "--out" not in args:
        args = ["--out", "reports", *args]
    _audit_and_judge(session, args, mutants=True)


def _audit_library(session: nox.Session, name: str, extras: str) -> None:
    """Audit another library as the subject into reports/<name>/ (options pass through). The session's job
    is the report: a non-conformant library is a finding it writes down (the log names the verdicts), so
    the session succeeds unless the audit itself could not run (exit 2 or a crash)."""
    _install(session, extras)
    args = session.posargs or []
    if "--out" not in args:
        args = ["--out", f"reports/{name}", *args]
    session.run("python", "-m", "audit", "run", "--subject", name, *args, success_codes=[0, 1])
    out = args[args.index("--out") + 1]
    session.log(f"{name}: see {out}/SUMMARY.md (verdicts by concern; every departure with its source)")


@nox.session(name="audit-peft", python=PYTHON)
def audit_peft(session: nox.Session) -> None:
    """Audit the installed peft's own implementation (its init, targeting, save/load) against the papers,
    with ours as the second reference; writes reports/peft/ (options pass through)."""
    _audit_library(session, "peft", "audit,dev")


@nox.session(name="audit-lycoris", python=PYTHON)
def audit_lycoris(session: nox.Session) -> None:
    """Audit the LyCORIS library (the LoHa/LoKr authors' code) as the subject; writes reports/lycoris/."""
    _audit_library(session, "lycoris", "audit,dev")


@nox.session(name="audit-torchtune", python=PYTHON)
def audit_torchtune(session: nox.Session) -> None:
    """Audit torchtune's LoRA and DoRA modules as the subject; writes reports/torchtune/."""
    _audit_library(session, "torchtune", "audit,dev,torchtune")


@nox.session(python=PYTHON)
def gate(session: nox.Session) -> None:
    """Run the default audit into a temporary folder and gate it against reports/baseline.json."""
    _install(session)
    out = session.create_tmp()
    # exit 1 (a non-conformant verdict) still produces results: the gate decides whether that regresses
    session.run("python", "-m", "audit", "run", "--out", out, "--quiet", *session.posargs, success_codes=[0, 1])
    session.run("python", "-m", "audit", "gate", "--baseline", "reports/baseline.json",
                "--results", f"{out}/results.json")
    if not session.posargs:  # the installed peft, audited as the subject, against its own baseline
        peft_out = os.path.join(out, "peft")
        session.run("python", "-m", "audit", "run", "--subject", "peft", "--out", peft_out, "--quiet",
                    success_codes=[0, 1])
        session.run("python", "-m", "audit", "gate", "--baseline", "reports/peft/baseline.json",
                    "--results", f"{peft_out}/results.json")


@nox.session(python=PYTHON)
def baseline(session: nox.Session) -> None:
    """Rewrite reports/ and reports/baseline.json on purpose (review the diff before committing)."""
    _install(session)
    session.run("python", "-m", "audit", "run", "--out", "reports", "--quiet", success_codes=[0, 1])
    session.run("python", "-m", "audit", "baseline", "--results", "reports/results.json",
                "--out", "reports/baseline.json")
    session.run("python", "-m", "audit", "run", "--subject", "peft", "--out", "reports/peft", "--quiet",
                success_codes=[0, 1])
    session.run("python", "-m", "audit", "baseline", "--results", "reports/peft/results.json",
                "--out", "reports/peft/baseline.json")


def _seeds(spec: str) -> list[int]:
    """"0-9" -> 0..9; "0,3,5-7" -> 0, 3, 5, 6, 7."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return list(dict.fromkeys(out))


@nox.session(python=PYTHON)
def seeds(session: nox.Session) -> None:
    """The default audit (every check but timing) under several seeds, AUDIT_SEEDS="0-9" by default
    (e.g. AUDIT_SEEDS=0-4 or 0,3,7); prints a variant x seed table of verdicts and fails when a verdict
    is not conformant/partial or a variant's verdict differs across seeds. Extra options pass to `run`."""
    _install(session)
    try:
        seed_list = _seeds(os.environ.get("AUDIT_SEEDS", "0-9"))
    except ValueError:
        session.error(f"AUDIT_SEEDS must look like 0-9 or 0,3,5-7, got {os.environ['AUDIT_SEEDS']!r}")
    if not seed_list:
        session.error("AUDIT_SEEDS names no seed")
    checks = session.run("python", "-c", "from audit.checks import CHECK_ORDER; "
                         "print(','.join(c for c in CHECK_ORDER if c != 'timing'))", silent=True)
    checks = str(checks).strip().splitlines()[-1]
    tmp = session.create_tmp()
    files = []
    for seed in seed_list:
        out = os.path.join(tmp, f"seed-{seed}")
        session.run("python", "-m", "audit", "run", "--out", out, "--seed", str(seed), "--checks", checks,
                    "--quiet", *session.posargs, success_codes=[0, 1])  # the comparison below decides
        files.append(os.path.join(out, "results.json"))
    session.run("python", "-m", "audit", "seeds", "--results", *files)


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


@nox.session(name="peft-matrix", python=PYTHON)
def peft_matrix(session: nox.Session) -> None:
    """Audit every peft release from 0.10.0 to the newest as the subject and write reports/peft-releases.md
    and .json (a method x release table of verdicts per concern; each finding's first and last release).
    Each release goes into its own folder under .peft-matrix/ (cached: a rerun resumes and re-audits only
    what changed). Options after `--` go to `python -m audit peft-matrix`, e.g. --releases 0.10.0,0.15.2,
    --jobs 2, --shard 1/4 (then --merge the shard files), and after a second `--` to each release's run.
    Not part of CI (it installs releases from the package index); the report it writes is committed."""
    _install(session)
    args = session.posargs or []
    if "--out" not in args and "--merge" not in args:
        args = ["--out", "reports", *args]
    session.run("python", "-m", "audit", "peft-matrix", *args)
