"""The mutant corpus: variants with exactly one realistic bug each, audited through --impl.

A mutant file defines ``MUTANT = Mutant(...)``. It is killed when the audit's verdict is
non-conformant AND one of its intended checks reports a fail/error/xpass row: "something failed"
is not enough. ``python -m audit mutants`` audits the corpus and adds the kill table to SUMMARY.md.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .cards import get
from .checks import CHECK_ORDER

BAD = ("fail", "error", "xpass")
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "mutants"
CHECKS = tuple(c for c in CHECK_ORDER if c != "timing")  # timing cannot tell a bug from noise


@dataclass(frozen=True)
class Mutant:
    name: str
    card: str
    bug_class: str
    description: str
    intended: tuple[str, ...]          # the check(s) that must flag it
    impl: type
    models: tuple[str, ...] = ("qwen2",)  # biased q/k/v, non-square k/v
    dtypes: tuple[str, ...] = ("float32",)
    configs: tuple[str, ...] = ("main",)  # the card's config ids it is audited under ("main": the card's main one)


def load_corpus(folder: Path = CORPUS) -> list[Mutant]:
    if not folder.is_dir():
        raise FileNotFoundError(f"mutant corpus folder not found: {folder}")
    out = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"_audit_mutant_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        if not isinstance(getattr(mod, "MUTANT", None), Mutant):
            raise ValueError(f"{path}: defines no MUTANT = Mutant(...)")
        out.append(mod.MUTANT)
    return out


def audit_mutant(m: Mutant, seed: int = 0) -> dict:
    """Run the audit on one mutant; return its outcome (checks that flagged it, killed or not)."""
    from . import runner, verdict
    plan = runner.Plan([runner.Target(get(m.card), m.impl, f"mutant:{m.name}")], list(m.models), list(m.dtypes),
                       list(CHECKS), seed=seed, only_configs=m.configs)
    rows = runner.run(plan, progress=False)
    v = verdict.verdicts(rows)[m.card]
    flagged = sorted({r.check for r in rows if r.status in BAD})
    caught = [c for c in m.intended if c in flagged]
    return {"name": m.name, "card": m.card, "configs": list(m.configs), "bug_class": m.bug_class,
            "description": m.description,
            "intended": list(m.intended), "flagged_by": flagged, "caught_by_intended": caught,
            "verdict": v["verdict"], "killed": bool(caught) and v["verdict"] == "non-conformant",
            "first_reason": v["reasons"][0] if v["reasons"] else ""}


def outcome_line(res: dict) -> str:
    """How one mutant fared, in words: which checks flagged it and whether its intended one was among them."""
    intended, flagged = ", ".join(res["intended"]), ", ".join(res["flagged_by"])
    if res["killed"]:
        others = [c for c in res["flagged_by"] if c not in res["caught_by_intended"]]
        return f"killed by {', '.join(res['caught_by_intended'])}" + (f" (also flagged by {', '.join(others)})"
                                                                     if others else "")
    if res["caught_by_intended"]:  # flagged where intended, yet the verdict did not say so
        return (f"SURVIVED: flagged by {flagged}, but the verdict is {res['verdict']} (a declared deviation "
                f"covers it?)")
    if res["flagged_by"]:
        return f"SURVIVED: flagged by {flagged}, none of them its intended check ({intended})"
    return f"SURVIVED: no check flagged it (intended: {intended}; verdict {res['verdict']})"


def run_corpus(folder: Path = CORPUS, progress: bool = True) -> dict:
    """Audit every mutant of the corpus; the document written to mutants.json."""
    from .results import provenance
    corpus = load_corpus(folder)
    outcomes = []
    for m in corpus:
        res = audit_mutant(m)
        outcomes.append(res)
        if progress:
            print(f"mutant {m.name:36s} {outcome_line(res)}", file=sys.stderr)
    killed = sum(o["killed"] for o in outcomes)
    return {"meta": provenance(0, "cpu", sys.argv),
            "models": sorted({x for m in corpus for x in m.models}),
            "dtypes": sorted({x for m in corpus for x in m.dtypes}),
            "mutants": outcomes, "killed": killed, "total": len(outcomes),
            "kill_rate": killed / len(outcomes) if outcomes else 0.0}


def write(out: Path, doc: dict) -> Path:
    from .results import atomic_write
    path = out / "mutants.json"
    atomic_write(path, json.dumps(doc, indent=1) + "\n")
    return path
