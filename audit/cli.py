"""python -m audit run | gate | baseline | mutants | seeds: the command line.

Exit codes (every subcommand): 0 success; 1 findings (``run``: a non-conformant verdict or an error
row; ``gate``: a regression; ``mutants``: a surviving mutant; ``seeds``: verdicts that differ or are
not conformant/partial); 2 usage error, reported as ``python -m audit <command>: error: <message>``
before anything is built; 130 interrupted (Ctrl-C), with nothing written.
"""
from __future__ import annotations

import argparse
import dataclasses
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from .checks import CHECK_ORDER
from .cli_args import DTYPE_ALIASES, DTYPES, build_parser

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command-line input: main() reports it argparse's way (``prog: error: msg``) and exits 2."""


def _dedupe(items) -> list:
    return list(dict.fromkeys(items))


# -- --impl -----------------------------------------------------------------------------------------

def load_impl(spec: str, flag: str = "--impl"):
    """The class a subject spec names (``module:Class`` or ``FILE.py:Class``); a UsageError naming why."""
    from . import subjects
    try:
        return subjects.load_class(spec, flag)
    except subjects.SpecError as e:
        raise UsageError(str(e)) from None


def _subject_meta(targets) -> dict:
    """Who was audited and against what, for results.json and the reports."""
    from .twins import reference_names
    subj = targets[0].subject if targets else None
    return {"kind": getattr(subj, "kind", ""), "label": subj.describe() if subj else "",
            "version": getattr(subj, "version", ""),
            "references": {t.card.name: reference_names(t.card, t.subject) for t in targets}}


def _targets(args) -> list:
    """The (card, subject) pairs of a run, from --subject / --impl, --card and --variants."""
    from . import runner, subjects
    from .cards import CARDS, get
    if args.impl and args.subject:
        raise UsageError("--impl is the older spelling of --subject: give one of them")
    flag, spec = ("--impl", args.impl) if args.impl else ("--subject", args.subject or "ours")
    if flag == "--impl" and not args.card:
        raise UsageError("--impl needs --card NAME (the card to audit against); cards: " + ", ".join(sorted(CARDS)))
    if args.card and args.variants is not None:
        raise UsageError(f"--variants cannot be combined with --card (the --card names what {flag} is audited against)")
    if args.variants is not None and not args.variants:
        raise UsageError(f"--variants is empty; cards: {', '.join(sorted(CARDS))}")
    names = [args.card] if args.card else (_dedupe(args.variants) if args.variants is not None else None)
    unknown = [n for n in names or [] if n not in CARDS]
    if unknown:
        what = f"--card {args.card!r}: no such card" if args.card else f"unknown variant(s) {', '.join(unknown)}"
        raise UsageError(f"{what}; cards: {', '.join(sorted(CARDS))}")
    if spec in ("ours", "peft"):
        if args.card:
            raise UsageError(f"--card is only used with --impl or a --subject naming a variants.Variant; "
                             f"use --variants with --subject {spec}")
        if spec == "peft" and names is None:  # default: every card with a peft method (n/a where this release lacks it)
            from references.peft_bridge import PEFT_VARIANTS
            names = [n for n in sorted(CARDS) if n in PEFT_VARIANTS]
        try:
            return runner.default_targets(names, spec)
        except ValueError as e:
            raise UsageError(str(e)) from None
    cls = load_impl(spec, flag)
    import variants
    if issubclass(cls, variants.Variant):
        if not args.card:
            raise UsageError(f"{flag} {spec} is a variants.Variant (one method): name its card with --card; "
                             f"cards: {', '.join(sorted(CARDS))}")
        return [runner.Target(get(args.card), cls, spec, spec)]
    subject = subjects.as_subject(cls, spec)
    if names is None:
        names = [n for n in sorted(CARDS) if subject.supports(n) is None]
        if not names:
            raise UsageError(f"{flag} {spec}: the driver supports none of the cards ({', '.join(sorted(CARDS))}); "
                             "declare tensor_names for at least one")
    return [runner.Target(get(n), subject, spec, spec) for n in names]


# -- input validation --------------------------------------------------------------------------------

def normalise_dtypes(names: list[str]) -> list[str]:
    """Aliases (bf16, fp32, f32, fp16, half) to torch names, duplicates dropped; unknown -> UsageError."""
    out, unknown = [], []
    for n in names:
        d = DTYPE_ALIASES.get(n.lower(), n.lower())
        (out if d in DTYPES else unknown).append(d if d in DTYPES else n)
    if unknown:
        raise UsageError(f"unknown dtype(s) {', '.join(unknown)}; valid dtypes: {', '.join(DTYPES)} "
                         f"(aliases: {', '.join(f'{a}={d}' for a, d in DTYPE_ALIASES.items())})")
    return _dedupe(out)


def check_out_dir(out: Path) -> Path:
    """``--out`` must be a folder we can create and write into: checked before the run, not after."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".audit-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--out {out}: the folder is not writable ({e.strerror or e})") from None
    return out


def _model_path_label(path: str, taken: set[str]) -> str:
    base = f"path:{Path(path).name or path}"
    label, i = base, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    return label


def run_exit_code(rows, verdicts: dict) -> int:
    """1 when a verdict is non-conformant, a row errored, or a row about the audited implementation
    itself failed (rows with ``about == "reference"`` audit the external reference: only their errors
    count); else 0."""
    if any(v.get("verdict") == "non-conformant" for v in verdicts.values()):
        return EXIT_FINDINGS
    for r in rows:
        status = r["status"] if isinstance(r, dict) else r.status
        about = r.get("about", "subject") if isinstance(r, dict) else getattr(r, "about", "subject")
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

def _parse_field(item: str) -> tuple[str, object]:
    import json
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--config {item!r}: expected KEY=VALUE, e.g. alpha=16")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a plain string: rotate_basis=U, road_variant=road_2
    return key.strip(), tuple(value) if isinstance(value, list) else value


def extra_config(items: list[str], targets) -> tuple:
    """The --config fields as one ConfigCase (id "cli"), validated against every selected card's config."""
    from .cards import ConfigCase
    if not items:
        return ()
    import variants
    fields = dict(_parse_field(i) for i in items)
    for t in targets:
        schema = variants.REGISTRY.get(t.card.name) if t.variant is None else t.variant
        if schema is None:
            continue  # a card with no config schema: its subject gets the fields as given
        names = [f.name for f in dataclasses.fields(schema.Config)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise UsageError(f"--config: card {t.card.name!r} has no config field {', '.join(unknown)}; its fields: "
                             f"{', '.join(names)}")
        try:
            schema.Config(**{**t.card.config, **fields})
        except (TypeError, ValueError) as e:
            raise UsageError(f"--config on card {t.card.name!r}: {e}") from None
    why = "given on the command line: " + ", ".join(f"{k}={v!r}" for k, v in fields.items())
    return (ConfigCase("cli", fields, why, models=None, dtypes=None, checks=None),)


def _configs_selected(ids: list[str] | None, targets, extra: tuple) -> tuple | None:
    """--configs as config ids; "main" stands for each card's main config. Unknown ids are refused."""
    if ids is None:
        return None
    known = {"main"} | {c.id for t in targets for c in t.card.cases()} | {c.id for c in extra}
    bad = [i for i in ids if i not in known]
    if bad:
        raise UsageError(f"--configs: no selected card has config(s) {', '.join(bad)}; configs: {', '.join(sorted(known))}")
    if not ids:
        raise UsageError("--configs is empty")
    return tuple(dict.fromkeys(ids))


def cmd_run(args: argparse.Namespace) -> int:
    from . import local_models, models, report, results, runner, verdict

    # cheap checks first, then the ones that import user code or read configs, --out last
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    unknown = [c for c in args.checks if c not in CHECK_ORDER and c != "all"]
    if unknown:
        raise UsageError(f"unknown check(s) {', '.join(unknown)}; checks: {', '.join(CHECK_ORDER)} (or all)")
    checks = _dedupe(c for name in args.checks for c in (CHECK_ORDER if name == "all" else (name,)))
    if not checks:
        raise UsageError(f"--checks is empty; checks: {', '.join(CHECK_ORDER)}")
    bad_models = [m for m in args.models if m not in models.ZOO]
    if bad_models:
        raise UsageError(f"unknown model(s) {', '.join(bad_models)}; zoo: {', '.join(models.ZOO)} "
                         "(use --model-path for local checkpoints)")
    model_names = _dedupe(args.models)
    if not model_names and not args.model_path:
        raise UsageError("nothing to audit: --models is empty and no --model-path given")
    dtypes = normalise_dtypes(args.dtypes)
    if not dtypes:
        raise UsageError(f"--dtypes is empty; valid dtypes: {', '.join(DTYPES)}")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: CUDA is not available on this machine")

    targets = _targets(args)

    supported = {d for t in targets for d in t.card.dtypes}
    unsupported = [d for d in dtypes if d not in supported]
    if unsupported:
        per_card = "; ".join(f"{t.card.name}: {', '.join(t.card.dtypes)}" for t in targets)
        raise UsageError(f"dtype(s) {', '.join(unsupported)} not supported by any selected card ({per_card})")

    extra = extra_config(args.config, targets)
    only = _configs_selected(args.configs, targets, extra)
    for t in targets:  # the cards carry the --config case too, so reports and deviations know it
        for case in extra:
            t.card = t.card.with_case(case)

    factories, model_notes = {}, {}
    for path in _dedupe(args.model_path):
        try:
            found = local_models.check_local(path)
        except ValueError as e:
            msg = str(e)
            raise UsageError(msg.replace("model path", "--model-path", 1) if msg.startswith("model path")
                             else f"--model-path {path}: {msg}") from None
        label = _model_path_label(path, set(model_names))
        factories[label] = (lambda p=path: local_models.load_local(p))
        model_notes[label] = found.describe()
        model_names.append(label)
    out = check_out_dir(args.out)

    plan = runner.Plan(targets, model_names, dtypes, checks, seed=args.seed, device=args.device,
                       model_factories=factories, extra_configs=extra, only_configs=only)
    t0 = time.perf_counter()
    runner.single_threaded()
    try:
        rows = runner.run(plan, progress=not args.quiet, jobs=args.jobs)
    except KeyboardInterrupt:
        return _interrupted()
    verdicts = verdict.verdicts(rows)
    meta = results.provenance(args.seed, args.device, sys.argv)
    meta.update({"wall_seconds": round(time.perf_counter() - t0, 2), "models": model_names,
                 "dtypes": dtypes, "checks": checks, "model_notes": model_notes,
                 "implementations": {t.card.name: t.label for t in targets},
                 "subject": _subject_meta(targets),
                 "jobs": args.jobs if runner.parallel_ok(plan) else 1})
    with _sigint_deferred() as hits:
        report.render(out, meta, rows, verdicts, targets)
        results.write(out, meta, rows, verdicts)  # last: a results.json always comes with its reports
        removed = remove_stale_reports(out, {t.card.name for t in targets})
    for name, v in verdicts.items():
        print(f"{name:10s} {v['verdict']:15s} confidence {v['confidence']}")
    print(f"wrote {out}/results.json, SUMMARY.md and {len(verdicts)} variant reports "
          f"in {meta['wall_seconds']:.1f}s" + (f"; removed stale {', '.join(p.name for p in removed)}" if removed else ""))
    if hits:
        return _interrupted("the results had been written completely")
    code = run_exit_code(rows, verdicts)
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
    rep = gate.compare(baseline, res, drift)
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


COMMANDS = {"run": cmd_run, "gate": cmd_gate, "baseline": cmd_baseline, "mutants": cmd_mutants, "seeds": cmd_seeds}


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
        except UsageError as e:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices[args.command].error(str(e))
    except KeyboardInterrupt:
        return _interrupted()
    return EXIT_USAGE  # not reached: error() exits
