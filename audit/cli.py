"""python -m audit run | gate | baseline | mutants | seeds: the command line. It parses and prints;
what ``run`` checks and builds (the plan, the output folder) is audit.run_plan.

Exit codes (every subcommand): 0 success; 1 findings (``run``: a non-conformant verdict or an error
row; ``gate``: a regression; ``mutants``: a surviving mutant; ``seeds``: verdicts that differ or are
not conformant/partial); 2 usage error, reported as ``python -m audit <command>: error: <message>``
before anything is built; 130 interrupted (Ctrl-C), with nothing written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from . import results, run_plan
from .cli_args import DTYPES, build_parser
from .run_plan import PlanError, check_out_dir, load_impl, normalise_dtypes

# load_impl, normalise_dtypes (run_plan) and DTYPES (cli_args) stay importable from here for tests and noxfile.py
__all__ = ["main", "run_exit_code", "remove_stale_reports", "load_impl", "normalise_dtypes", "DTYPES",
           "UsageError", "EXIT_OK", "EXIT_FINDINGS", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command-line input: main() reports it argparse's way (``prog: error: msg``) and exits 2."""


def run_exit_code(rows, verdicts: dict, require: tuple[str, ...] | None = None) -> int:
    """1 when a verdict is non-conformant, a row errored, or a row about the audited implementation
    itself failed (rows with ``about == "reference"`` audit the external reference: only their errors
    count); else 0. ``require``: only the rows of these concerns count (the verdicts were judged so)."""
    from .verdict import concern_of
    if any(v.get("verdict") == "non-conformant" for v in verdicts.values()):
        return EXIT_FINDINGS
    for r in rows:
        get = r.get if isinstance(r, dict) else lambda k, d=None, _r=r: getattr(_r, k, d)
        if require is not None and concern_of(get("check")) not in require:
            continue
        status, about = get("status"), get("about", "subject")
        if status == "error" or (about != "reference" and status in ("fail", "xpass")):
            return EXIT_FINDINGS
    return EXIT_OK


def remove_stale_reports(out: Path, keep: set[str]) -> list[Path]:
    """Remove ``<card>.md`` files of cards not in this run that look generated (first line a markdown
    title), so an old variant report never sits beside a new SUMMARY.md. Other files are left alone."""
    from .cards import CARDS
    removed = []
    for name in sorted(set(CARDS) - set(keep)):
        path = out / f"{name}.md"
        if not path.is_file():
            continue
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
        except (OSError, UnicodeDecodeError):
            continue
        if first.startswith("# "):
            path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C until the block ends (the writes), so reports are never left half-written."""
    hits: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield hits
        return
    previous = signal.signal(signal.SIGINT, lambda *_: hits.append(1))
    try:
        yield hits
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _interrupted(what: str = "nothing written") -> int:
    print(f"interrupted; {what}", file=sys.stderr)
    return EXIT_INTERRUPTED


# -- commands ----------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from . import report, results, runner, verdict

    req = run_plan.RunRequest.from_args(args)
    built = run_plan.build(req)  # every check of the options, --out last; PlanError -> exit 2
    plan, out = built.plan, built.out
    t0 = time.perf_counter()
    runner.single_threaded()
    try:
        rows = runner.run(plan, progress=not req.quiet, jobs=req.jobs)
    except KeyboardInterrupt:
        return _interrupted()
    # coverage counts every config the card has, not only those this run selected (--configs)
    every = {t.card.name: [c.id for c in runner.cases(t.card, replace(plan, only_configs=None))] for t in plan.targets}
    verdicts = verdict.verdicts(rows, args.require, every)
    meta = results.provenance(req.seed, req.device, sys.argv)
    meta.update({"wall_seconds": round(time.perf_counter() - t0, 2), "models": plan.models,
                 "dtypes": plan.dtypes, "checks": plan.checks, "model_notes": built.model_notes,
                 "implementations": {t.card.name: t.label for t in plan.targets},
                 "subject": built.subject_meta(),
                 "jobs": req.jobs if runner.parallel_ok(plan) else 1,
                 "required": list(args.require) if args.require else None})
    with _sigint_deferred() as hits:
        report.render(out, meta, rows, verdicts, plan.targets)
        results.write(out, meta, rows, verdicts)  # last: a results.json always comes with its reports
        removed = remove_stale_reports(out, {t.card.name for t in plan.targets})
    for name, v in verdicts.items():  # one line each: the verdict, its confidence and every concern's verdict
        print(f"{name:10s} {v['verdict']:15s} confidence {v['confidence']:7s} {v['headline'].split(': ', 1)[1]} "
              f"[{verdict.coverage_text(v.get('coverage'))}]")
    print(f"wrote {out}/results.json, SUMMARY.md and {len(verdicts)} variant reports "
          f"in {meta['wall_seconds']:.1f}s" + (f"; removed stale {', '.join(p.name for p in removed)}" if removed else ""))
    if hits:
        return _interrupted("the results had been written completely")
    code = run_exit_code(rows, verdicts, args.require)
    if code:
        bad = [n for n, v in verdicts.items() if v.get("verdict") == "non-conformant"]
        errors = sum(r.status == "error" for r in rows)
        print(f"exit 1: non-conformant: {', '.join(bad) or '-'}; error rows: {errors}", file=sys.stderr)
    return code


def _read(path: Path, what: str) -> dict:
    from . import results
    try:
        return results.read(path)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{what}: {e}") from None


def cmd_gate(args: argparse.Namespace) -> int:
    from . import gate
    drift = gate.DRIFT if args.drift is None else args.drift
    if not drift >= 1:
        raise UsageError(f"--drift must be >= 1 (1: departures as large as in the baseline), got {args.drift}")
    baseline = _read(args.baseline, "--baseline")
    res = _read(args.results, "--results")
    rep = gate.compare(baseline, res, drift, args.require)
    print(gate.render(rep))
    return EXIT_OK if rep.ok else EXIT_FINDINGS


def cmd_baseline(args: argparse.Namespace) -> int:
    import json

    from . import gate, results
    doc = gate.make_baseline(_read(args.results, "--results"))
    try:
        results.atomic_write(args.out, json.dumps(doc, indent=1) + "\n")
    except OSError as e:
        raise UsageError(f"--out {args.out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_mutants(args: argparse.Namespace) -> int:
    from . import mutants, report
    from .rows import Row
    corpus = args.corpus or mutants.CORPUS
    if not corpus.is_dir():
        raise UsageError(f"--corpus {corpus}: not a folder")
    results_path = args.out / "results.json"
    res = _read(results_path, "--out") if results_path.exists() else None  # a foreign file: refused before the run
    check_out_dir(args.out)
    try:
        doc = mutants.run_corpus(corpus, progress=not args.quiet)
    except KeyboardInterrupt:
        return _interrupted()
    with _sigint_deferred() as hits:
        mutants.write(args.out, doc)
        if res is not None:
            rows = [Row(**{k: v for k, v in r.items() if k in Row.__dataclass_fields__}) for r in res["rows"]]
            report.render_summary(args.out, res["meta"], rows, res["verdicts"])
    print(f"kill rate {doc['killed']}/{doc['total']}; wrote {args.out}/mutants.json"
          + (" and the kill table into SUMMARY.md" if res is not None else
             f" (no audit results in {args.out}: `python -m audit run --out {args.out}` writes SUMMARY.md "
             "with this kill table)"))
    if hits:
        return _interrupted("mutants.json had been written completely")
    return EXIT_OK if doc["killed"] == doc["total"] else EXIT_FINDINGS


def cmd_seeds(args: argparse.Namespace) -> int:
    from . import gate
    docs = [_read(p, "--results") for p in args.results]
    labels = []
    for p, d in zip(args.results, docs):
        seed = d["meta"].get("seed")
        labels.append(f"seed {seed}" if seed is not None else str(p))
    if len(set(labels)) < len(labels):  # the same seed twice: tell the files apart
        labels = [f"{lab} ({p})" for lab, p in zip(labels, args.results)]
    ok, text = gate.compare_seeds(docs, labels)
    print(text)
    return EXIT_OK if ok else EXIT_FINDINGS


def cmd_peft_matrix(args: argparse.Namespace) -> int:
    from . import peft_matrix as pm
    from . import peft_matrix_report as report
    try:
        if args.merge:
            if args.shard or args.releases or args.run_options:
                raise UsageError("--merge renders shard files and audits nothing: drop --releases, --shard and run options")
            records = report.read_shards(args.merge)
        else:
            if args.jobs < 1:
                raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
            options = pm.check_run_options(args.run_options)
            shard = pm.parse_shard(args.shard)
            releases = pm.shard_of(pm.parse_releases(args.releases), shard)
            check_out_dir(args.out)
            records = pm.run_matrix(releases, args.cache, options, args.jobs, progress=not args.quiet)
            if shard is not None:
                path = args.out / f"peft-releases.shard-{shard[0]}-of-{shard[1]}.json"
                results.atomic_write(path, json.dumps({"kind": "peft-matrix-shard", "releases": records}, indent=1) + "\n")
                print(f"wrote {path} ({len(records)} releases); render with --merge once every shard is done")
                return _matrix_exit(records)
    except (pm.MatrixError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not records:
        raise UsageError("no release to render")
    md, _ = report.write(records, args.out)
    for r in records:
        verdicts = {m: c["verdict"] for m, c in r.get("methods", {}).items() if c["verdict"] != "absent"}
        bad = sorted(m for m, v in verdicts.items() if v == "non-conformant")
        print(f"peft {r['release']}: {r['status']}" + (f", {len(verdicts)} methods, non-conformant: "
                                                      f"{', '.join(bad) or 'none'}" if r["status"] == "audited" else
                                                      f" ({r.get('message', '')})"))
    print(f"wrote {md} and {md.with_suffix('.json')}")
    return _matrix_exit(records)


def _matrix_exit(records: list[dict]) -> int:
    """0 when every release was audited (or found not to import), 1 when one could not be installed or crashed."""
    return EXIT_OK if all(r["status"] in ("audited", "does not import") for r in records) else EXIT_FINDINGS


COMMANDS = {"run": cmd_run, "gate": cmd_gate, "baseline": cmd_baseline, "mutants": cmd_mutants, "seeds": cmd_seeds,
            "peft-matrix": cmd_peft_matrix}


def main(argv: list[str] | None = None) -> int:
    """Parse and dispatch; returns the exit code. Usage errors raise SystemExit(2) after printing
    ``python -m audit <command>: error: <message>`` (as argparse does for its own errors)."""
    from .noise import quiet_known_warnings
    quiet_known_warnings()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            return COMMANDS[args.command](args)
        except (UsageError, PlanError) as e:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices[args.command].error(str(e))
    except KeyboardInterrupt:
        return _interrupted()
    return EXIT_USAGE  # not reached: error() exits
