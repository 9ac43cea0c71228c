"""python -m audit run | gate: the command line."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from .checks import CHECK_ORDER

DEFAULT_MODELS = ("qwen3", "qwen2", "llama", "mlp")
DEFAULT_DTYPES = ("float32", "bfloat16")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m audit", description=(
        "adapter-audit: check LoRA-family adapters against their papers and against peft."))
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the audit and write results.json, SUMMARY.md and <variant>.md",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Run checks over variant x model x dtype and render the reports.")
    r.add_argument("--out", required=True, type=Path, help="output folder for results.json and the markdown reports")
    r.add_argument("--variants", type=_csv, default=None,
                   help="comma-separated variants (cards) to audit; default: all cards")
    r.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS),
                   help="comma-separated zoo models (qwen3, qwen2, llama, mlp)")
    r.add_argument("--dtypes", type=_csv, default=list(DEFAULT_DTYPES), help="comma-separated dtypes")
    r.add_argument("--checks", type=_csv, default=list(CHECK_ORDER), help="comma-separated checks")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where models run")
    r.add_argument("--seed", type=int, default=0, help="seed for models, inputs and adapter inits")
    r.add_argument("--model-path", action="append", default=[], metavar="PATH",
                   help="a local HF causal-LM checkpoint folder, or a hub id already in the local cache "
                        "(never downloaded); repeatable; audited alongside --models")
    r.add_argument("--impl", metavar="MODULE:CLASS", default=None,
                   help="audit your own implementation of the variant protocol (a variants.Variant subclass) "
                        "from an importable module or a .py file path; needs --card")
    r.add_argument("--card", default=None, help="the card the --impl implementation is audited against")
    r.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes auditing variants in parallel (1 = serial; --impl and --model-path run serially)")
    r.add_argument("--quiet", action="store_true", help="no progress lines")

    g = sub.add_parser("gate", help="compare a results.json with the baseline; exit 1 on a regression",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Cell-by-cell regression gate: a status that gets worse, a verdict that "
                                   "drops, a missing cell or an error metric growing beyond --factor x its "
                                   "baseline fails. Timing is reported only; new cells are listed.")
    g.add_argument("--baseline", type=Path, default=Path("reports/baseline.json"), help="the committed baseline")
    g.add_argument("--results", type=Path, required=True, help="results.json of a fresh run")
    g.add_argument("--factor", type=float, default=None, help="allowed growth of an error metric (default 4)")

    b = sub.add_parser("baseline", help="write a baseline from a results.json (on purpose: it moves the gate)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--results", type=Path, default=Path("reports/results.json"), help="results.json to freeze")
    b.add_argument("--out", type=Path, default=Path("reports/baseline.json"), help="baseline file to write")

    m = sub.add_parser("mutants", help="audit the mutant corpus and add the kill table to DIR/SUMMARY.md",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--out", type=Path, required=True, help="folder with results.json; mutants.json is written there")
    m.add_argument("--corpus", type=Path, default=None, help="folder of mutant files (default tests/mutants)")
    m.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def load_impl(spec: str):
    """Import ``module:Class`` or ``path/to/file.py:Class``."""
    if ":" not in spec:
        raise SystemExit(f"--impl must be MODULE:CLASS or FILE.py:CLASS, got {spec!r}")
    mod_name, cls_name = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        import importlib.util
        path = Path(mod_name).resolve()
        if not path.is_file():
            raise SystemExit(f"--impl: file not found: {path}")
        spec_ = importlib.util.spec_from_file_location(f"_audit_impl_{path.stem}", path)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[spec_.name] = module
        spec_.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise SystemExit(f"--impl: cannot import module {mod_name!r}: {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise SystemExit(f"--impl: module {mod_name!r} has no attribute {cls_name!r}")
    import variants
    if not (isinstance(cls, type) and issubclass(cls, variants.Variant)):
        raise SystemExit(f"--impl: {spec} is not a subclass of variants.Variant")
    return cls


def cmd_run(args: argparse.Namespace) -> int:
    from . import models, report, results, runner, verdict
    from .cards import CARDS, get

    unknown = [c for c in args.checks if c not in CHECK_ORDER]
    if unknown:
        raise SystemExit(f"unknown check(s) {unknown}; checks: {', '.join(CHECK_ORDER)}")
    bad_models = [m for m in args.models if m not in models.ZOO]
    if bad_models:
        raise SystemExit(f"unknown model(s) {bad_models}; zoo: {', '.join(models.ZOO)} (use --model-path for local checkpoints)")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available on this machine")
    if args.impl:
        if not args.card:
            raise SystemExit("--impl needs --card NAME (the card to audit against)")
        cls = load_impl(args.impl)
        targets = [runner.Target(get(args.card), cls, args.impl)]
    else:
        if args.card:
            raise SystemExit("--card is only used with --impl")
        try:
            targets = runner.default_targets(args.variants)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    factories = {}
    model_names = list(args.models)
    for path in args.model_path:
        label = f"path:{Path(path).name or path}"
        factories[label] = (lambda p=path: models.load_local(p))
        model_names.append(label)
    plan = runner.Plan(targets, model_names, args.dtypes, args.checks, seed=args.seed, device=args.device,
                       model_factories=factories)
    t0 = time.perf_counter()
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    runner.single_threaded()
    rows = runner.run(plan, progress=not args.quiet, jobs=args.jobs)
    verdicts = verdict.verdicts(rows)
    meta = results.provenance(args.seed, args.device, sys.argv)
    meta.update({"wall_seconds": round(time.perf_counter() - t0, 2), "models": model_names,
                 "dtypes": args.dtypes, "checks": args.checks,
                 "implementations": {t.card.name: t.label for t in targets},
                 "jobs": args.jobs if runner.parallel_ok(plan) else 1})
    results.write(args.out, meta, rows, verdicts)
    report.render(args.out, meta, rows, verdicts, targets)
    for name, v in verdicts.items():
        print(f"{name:10s} {v['verdict']:15s} confidence {v['confidence']}")
    print(f"wrote {args.out}/results.json, SUMMARY.md and {len(verdicts)} variant reports "
          f"in {meta['wall_seconds']:.1f}s")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from . import gate
    ok, text = gate.gate(args.baseline, args.results, args.factor or gate.FACTOR)
    print(text)
    return 0 if ok else 1


def cmd_baseline(args: argparse.Namespace) -> int:
    from . import gate
    print(f"wrote {gate.write_baseline(args.results, args.out)}")
    return 0


def cmd_mutants(args: argparse.Namespace) -> int:
    from . import mutants, report, results
    from .rows import Row
    doc = mutants.run_corpus(args.corpus or mutants.CORPUS, progress=not args.quiet)
    mutants.write(args.out, doc)
    if (args.out / "results.json").exists():
        res = results.read(args.out / "results.json")
        report.render_summary(args.out, res["meta"], [Row(**r) for r in res["rows"]], res["verdicts"])
    print(f"kill rate {doc['killed']}/{doc['total']}; wrote {args.out}/mutants.json")
    return 0 if doc["killed"] == doc["total"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"run": cmd_run, "gate": cmd_gate, "baseline": cmd_baseline, "mutants": cmd_mutants}[args.command](args)
