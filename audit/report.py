"""Render SUMMARY.md, <variant>.md and results.csv from the rows (numbers straight from the rows).

A person reads these first, so they lead with what decides: SUMMARY has one row per variant (the
verdict, the checks that decided it, per check its status and worst margin); a variant's report
gives the config audited, the verdict and why, the failing rows with a cheap diagnosis, the declared
deviations, the reference findings, the paper's claim and the code, and only then every measurement,
folded in ``<details>``: one table per check with one row per metric and one column per
model × dtype cell (every measured value is there; per-cell messages other than the worst row's are
in results.csv / results.json).

Numbers print with enough digits that a value never looks equal to a tolerance it differs from
(``fmt_vs``), and margins with enough digits that a failing one never prints as 1 (``fmt_margin``).
Timing on the zoo's tiny models is overhead-bound: it is labelled so, and only the fwd+bwd ratios
and peak memory are shown (fwd-only and millisecond medians stay in results.csv), so no column can
contradict another.

Every report names its subject (the implementation under audit, with its version) and the
references it was judged against (``meta["subject"]``; inferred from the cards for older
results.json), and says "ours"/"peft" only where it means them: timing compares the subject with the
base model and with the other implementation, the source excerpt is the subject's own code, and a
run whose subject is not ours lists the subject's departures from the papers in SUMMARY.md.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import statistics
from collections import defaultdict
from pathlib import Path

import jinja2

import variants

from .checks import CHECK_ORDER
from .checks.placement import FUSED_NOTE
from .results import atomic_write
from .rows import BAD, Row
from .verdict import fmt_number

SEVERITY = ("error", "fail", "xpass", "xfail", "pass", "n/a")
SUMMARY_CHECKS = ("identity_at_init", "init", "grad_flow", "paper_parity", "peft_parity", "properties",
                  "placement", "save_load", "merge", "training", "robustness")
CHECK_LABELS = {"identity_at_init": "identity", "grad_flow": "grad flow", "paper_parity": "paper parity",
                "peft_parity": "peft parity", "save_load": "save/load"}
DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
FINDING = ("fail", "xfail", "xpass", "error")
MAX_FAILURES_PER_CHECK = 25
OVERHEAD_NOTE = ("tiny models, per-call overhead dominates; not a speed claim; see `nox -s bench`")
TIMING_SHOWN = ("fwd_bwd_ratio_vs_base", "fwd_bwd_peak_mem_mb[")  # plus every judged timing row
OPS = {"<=": "≤", ">=": "≥", "==": "=", ">": ">"}


# -- numbers -------------------------------------------------------------------------------------
def fmt(v) -> str:
    """A number as the reports print it (verdict.fmt_number); strings as they are."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return fmt_number(float(v))
    return str(v)


def _g(v: float, p: int) -> str:
    return f"{v:.{p}g}"


def fmt_vs(value, tolerance) -> tuple[str, str]:
    """``value`` and ``tolerance`` printed so that they differ whenever the numbers differ."""
    vs, ts = fmt(value), fmt(tolerance)
    if (vs == ts and isinstance(value, (int, float)) and isinstance(tolerance, (int, float))
            and value != tolerance and math.isfinite(value) and math.isfinite(tolerance)):
        for p in range(5, 18):
            vs, ts = _g(float(value), p), _g(float(tolerance), p)
            if vs != ts:
                break
    return vs, ts


def fmt_margin(m: float | None) -> str:
    """A margin (value/tolerance; > 1 fails) with 2 significant digits, more when 2 would put it
    on the wrong side of 1 (1.00004 must not print as 1)."""
    if m is None:
        return "-"
    if math.isinf(m):
        return "inf"
    if math.isnan(m):
        return "nan"
    if m == 0:
        return "0"
    s = _g(m, 2)
    p = 2
    while p < 17 and ((float(s) > 1) != (m > 1) or (m != 1 and float(s) == 1)):
        p += 1
        s = _g(m, p)
    return s


def bound(r: Row) -> str:
    if r.tolerance is None:
        return "-"
    return f"{r.op} {fmt_vs(r.value, r.tolerance)[1]}"


def where(r: Row) -> str:
    return f"{r.place}/{DTYPE_SHORT.get(r.dtype, r.dtype)}"


def worst(rows: list[Row]) -> str:
    """The worst status of ``rows``, with its count unless it is pass or n/a."""
    statuses = {r.status for r in rows}
    for s in SEVERITY:
        if s in statuses:
            counts = sum(r.status == s for r in rows)
            return f"{s} ({counts}/{len(rows)})" if s not in ("pass", "n/a") else s
    return "-"


def worst_status(rows: list[Row]) -> str | None:
    statuses = {r.status for r in rows}
    return next((s for s in SEVERITY if s in statuses), None)


def max_margin(rows: list[Row]) -> tuple[float | None, Row | None]:
    judged = [r for r in rows if r.margin is not None]
    if not judged:
        return None, None
    r = max(judged, key=lambda r: (r.margin if not math.isnan(r.margin) else math.inf))
    return r.margin, r


def subject(rows: list[Row]) -> list[Row]:
    return [r for r in rows if getattr(r, "about", "subject") != "reference"]


def reference_rows(rows: list[Row]) -> list[Row]:
    return [r for r in rows if getattr(r, "about", "subject") == "reference"]


# -- diagnosis -----------------------------------------------------------------------------------
def diagnosis(r: Row, cell_rows: list[Row] = ()) -> str:
    """A short, honest reading of a failing row from the data at hand (the row, and the other rows
    of its cell); never a guess the numbers do not support."""
    if r.status == "error":
        if r.metric.startswith("deviation["):
            return "the card declares a deviation that matches no measurement: fix its check/metric/models/dtypes"
        return "no measurement: the check raised" if r.value is None else "error"
    if r.status == "xpass":
        return f"declared deviation `{r.deviation}` is no longer observed (the row passes): update the card"
    notes = []
    if r.metric.endswith("scale_factor") and isinstance(r.value, (int, float)) and r.value not in (0, 1):
        notes.append(f"scale off by {fmt(r.value)}×")
    for c in cell_rows:
        if (c is not r and c.check == r.check and c.metric.endswith("scale_factor")
                and isinstance(c.value, (int, float)) and c.value not in (0, 1) and c.status in BAD):
            notes.append(f"{c.metric} = {fmt(c.value)}: scale off by {fmt(c.value)}×")
            break
    if r.value is None:
        notes.append("no value measured")
    elif isinstance(r.value, float) and not math.isfinite(r.value):
        notes.append(f"non-finite value ({r.value}): the computation overflowed or produced NaN")
    elif r.tolerance is not None:
        m = r.margin
        if r.op == "<=":
            notes.append("should be exactly 0" if r.tolerance == 0 else f"value is {fmt_margin(m)}× the tolerance")
        elif r.op in (">", ">="):
            notes.append(f"below the required bound (needs {r.op} {fmt_vs(r.value, r.tolerance)[1]})")
        elif r.op == "==":
            v, t = fmt_vs(r.value, r.tolerance)
            notes.append(f"expected {t}, got {v}")
    if r.deviation and r.status == "fail":
        notes.append(f"beyond what deviation `{r.deviation}` covers")
    if "scale" in (r.message or "").lower() and not any("scale off" in n for n in notes):
        notes.insert(0, "message points at a scale: see it")
    return "; ".join(notes)


# -- CSV -----------------------------------------------------------------------------------------
CSV_COLUMNS = tuple(Row.__dataclass_fields__) + ("margin",)


def rows_frame(rows: list[Row]):
    """All rows as a pandas DataFrame: the Row fields in order, plus margin."""
    import pandas as pd
    recs = [{**dataclasses.asdict(r), "margin": r.margin} for r in rows]
    return pd.DataFrame.from_records(recs, columns=list(CSV_COLUMNS))


def write_csv(out: Path, rows: list[Row]) -> Path:
    path = Path(out) / "results.csv"
    atomic_write(path, rows_frame(rows).to_csv(index=False))
    return path


# -- shared pieces -------------------------------------------------------------------------------
def _display_path(path: str, module: str) -> str:
    """``path`` relative to the working directory, or from its top-level package when outside it or
    installed (``peft/tuners/lora/layer.py``, not ``../venv/lib/...`` nor ``.nox/tests/lib/...``)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    installed = {"site-packages", "dist-packages"} & set(Path(path).parts)  # e.g. a venv inside the checkout
    if not rel.startswith("..") and not installed:
        return rel
    top = module.split(".")[0]
    i = path.rfind(os.sep + top + os.sep)
    return path[i + 1:] if i >= 0 else path


def source_excerpts(variant_cls, max_lines: int = 14,
                    methods: tuple[str, ...] = ("forward", "forward_input", "init", "group_init"),
                    skip: tuple[str, ...] = ("variants._base",)) -> list[dict]:
    """file:line and a short excerpt of what the implementation does (its hook and init; for another
    class, ``methods``); methods only inherited from a module in ``skip`` (or torch) are left out."""
    out = []
    for meth in methods:
        fn = getattr(variant_cls, meth, None)
        if fn is None:
            continue
        owner = next((k for k in variant_cls.__mro__ if meth in vars(k)), None)
        if owner is None or owner.__module__ in skip or owner.__module__.split(".")[0] == "torch":
            continue
        try:
            lines, start = inspect.getsourcelines(fn)
            path = inspect.getsourcefile(fn)
        except (OSError, TypeError):
            continue
        if path is None:
            continue
        path = _display_path(path, owner.__module__)
        body = "".join(lines[:max_lines]).rstrip() + ("\n    ..." if len(lines) > max_lines else "")
        out.append({"method": f"{owner.__name__}.{meth}", "where": f"{path}:{start}", "code": body})
    return out


PEFT_METHODS = ("forward", "update_layer", "get_delta_weight")
DRIVER_METHODS = ("attach", "adapted_layers", "base_layer", "layer_tensors", "save", "load", "detach")


def subject_excerpts(tgt) -> tuple[list[dict], str]:
    """The code of the subject: (excerpts, a line saying whose code it is; or, with no excerpt, why).

    Ours: the variant's hook and init (its class from variants/). peft: the tuner layer class that
    replaces each target (references/peft_bridge MAPPINGS[card].peft_layer_class). A driver: the
    driver class's own methods and its declared tensor names for the card."""
    if tgt.variant is not None:
        return source_excerpts(tgt.variant), ""
    subj, name = tgt.subject, tgt.card.name
    if subj.kind == "peft":
        try:
            import importlib

            from references import peft_bridge as bridge
            dotted = bridge.MAPPINGS[name].peft_layer_class
            module, _, attr = dotted.rpartition(".")
            cls = getattr(importlib.import_module(module), attr)
        except Exception as e:  # noqa: BLE001 - no mapping, or the installed peft lacks the class
            return [], (f"No source excerpt is available for {subj.describe()} on {name}: its layer class could "
                        f"not be found ({type(e).__name__}: {str(e)[:200]}).")
        ex = (source_excerpts(cls, max_lines=45, methods=PEFT_METHODS[:1], skip=())  # its dispatch, then the sum
              + source_excerpts(cls, methods=PEFT_METHODS[1:], skip=()))
        note = (f"{subj.describe()}'s layer class `{dotted}` (`MAPPINGS[\"{name}\"].peft_layer_class` in "
                "references/peft_bridge), which replaces each target; targeting, init and save/load are "
                "peft's own too.")
        return ex, (note if ex else f"No source excerpt is available: `{dotted}` has no readable "
                                    f"{', '.join(PEFT_METHODS)} source.")
    cls = type(subj)
    spec = tgt.spec or tgt.label or f"{cls.__module__}:{cls.__name__}"
    ex = source_excerpts(cls, methods=DRIVER_METHODS, skip=("audit.subjects.base",))
    names = getattr(subj, "tensor_names", {}).get(name)
    if names:
        try:
            at = f"{_display_path(inspect.getsourcefile(cls), cls.__module__)}:{inspect.getsourcelines(cls)[1]}"
        except (OSError, TypeError):
            at = spec
        ex.append({"method": f"{cls.__name__}.tensor_names[{name!r}]", "where": at,
                   "code": "\n".join(f"{k!r}: {v!r}," for k, v in names.items())})
    if not ex:
        return [], f"No source excerpt is available for {subj.describe()}: its driver class has no readable source."
    return ex, f"The driver `{spec}` ({subj.describe()}): its own methods and the tensor names it declares."


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["cell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


def _meta(meta: dict) -> dict:
    """The run's meta with every key the templates read (older results.json lack some)."""
    m = dict(meta or {})
    versions = {"torch": "?", "transformers": "?", "peft": "?", **(m.get("versions") or {})}
    m.update(versions=versions, seed=m.get("seed", "?"), device=m.get("device", "?"),
             git_commit=m.get("git_commit") or "", git_dirty=bool(m.get("git_dirty")),
             wall_seconds=m.get("wall_seconds", "?"), models=list(m.get("models") or []),
             dtypes=list(m.get("dtypes") or []), checks=list(m.get("checks") or []),
             implementations=dict(m.get("implementations") or {}), model_notes=dict(m.get("model_notes") or {}))
    m["subject"] = subject_info(m)
    return m


# -- who was audited, against what ---------------------------------------------------------------
SUBJECT_GLOSS = {"ours": "this repo's hook runtime and variants",
                 "peft": "the installed peft through its own code paths (its config classes, targeting, init "
                         "and save/load)",
                 "third-party": "a driver (an `audit.subjects.Subject`) running its library's own code"}
OTHER = {"ours": "peft", "peft": "ours"}  # the implementation a subject is compared with side by side


def _with_version(label: str, version: str) -> str:
    return f"{label} {version}" if version and version not in label else label


def subject_info(meta: dict) -> dict:
    """The run's subject (kind, label with version, what it is) and the references of each card,
    from ``meta["subject"]``; a results.json without it (older runs) audited ours."""
    rec = meta.get("subject") if isinstance(meta.get("subject"), dict) else {}
    impls = meta.get("implementations") or {}
    kind = rec.get("kind") or "ours"
    label = rec.get("label") or ""
    if not label:
        others = _uniq(v for v in impls.values() if not str(v).startswith("variants."))
        label = "ours (variants/)" if kind == "ours" and not others else ", ".join(others) or kind
    other = OTHER.get(kind, "peft")
    full = _with_version(label, rec.get("version") or "")
    specs = [v for v in _uniq(map(str, impls.values())) if not v.startswith("variants.") and v not in full]
    return {"kind": kind, "label": full, "recorded": bool(rec), "specs": specs,
            "gloss": SUBJECT_GLOSS.get(kind, "the implementation under audit"), "other": other,
            "who": kind if kind != other else "subject", "short": {"third-party": "subject"}.get(kind, kind),
            "references": dict(rec.get("references") or {})}


def reference_label(name: str, meta: dict) -> str:
    """A reference as the reports name it: the paper formula, peft with its version, ours, or a port."""
    if name == "paper":
        return "the paper's formula"
    if name == "peft":
        v = (meta.get("versions") or {}).get("peft")
        return f"peft {v}" if v and v != "?" else "peft"
    if name == "ours":
        return "ours (variants/)"
    return f"{name} (independent port)"


def references_of(card_name: str, meta: dict, card=None, subject=None) -> tuple[list[str], str]:
    """The references the subject was judged against on ``card_name``, and where that comes from:
    "" (recorded in results.json), "inferred" (from the card; an older results.json) or "unknown"."""
    recorded = meta["subject"]["references"].get(card_name)
    if recorded is not None:
        return list(recorded), ""
    from types import SimpleNamespace

    from .cards import CARDS
    from .twins import reference_names
    card = card or CARDS.get(card_name)
    if card is None:
        return [], "unknown"
    return reference_names(card, subject or SimpleNamespace(kind=meta["subject"]["kind"])), "inferred"


def references_text(refs: list[str], meta: dict) -> str:
    names = [reference_label(r, meta) for r in refs]
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]


def references_overview(names: list[str], meta: dict) -> str:
    """One sentence: what each variant was judged against, grouped by identical reference lists."""
    groups: dict = defaultdict(list)
    sources = set()
    for n in names:
        refs, src = references_of(n, meta)
        sources.add(src)
        groups[tuple(refs)].append(n)
    if not groups:
        return "no variant in this run."
    parts = []
    for refs, ns in groups.items():
        what = references_text(list(refs), meta) if refs else "not recorded"
        parts.append(f"{what} on {'every variant' if len(groups) == 1 and len(ns) > 1 else ', '.join(ns)}"
                     + (f" ({', '.join(ns)})" if len(groups) == 1 and len(ns) > 1 else ""))
    text = "; ".join(parts) + "."
    if sources - {""}:
        text += " (Not recorded in this results.json, which predates the subject record: inferred from the cards.)"
    return text


def _verdict(v: dict | None) -> dict:
    v = dict(v or {})
    v.setdefault("verdict", "not audited")
    v.setdefault("confidence", "none")
    v.setdefault("references_agreeing", [])
    v.setdefault("reasons", [])
    v.setdefault("deciding", [])
    return v


def _by(rows, key) -> dict:
    out: dict = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


def _uniq(xs) -> list:
    return list(dict.fromkeys(xs))


def check_cell(rows: list[Row]) -> str:
    """SUMMARY cell of one check: status word and worst margin among the rows of that status."""
    s = worst_status(rows)
    if s is None:
        return "-"
    if s in ("n/a", "xfail"):
        return s
    if s == "error":
        return "**error**"
    m, _ = max_margin([r for r in rows if r.status == s])
    text = s if m is None else f"{s} {fmt_margin(m)}"
    return text if s == "pass" else f"**{text}**"


def deciding_text(v: dict, rows: list[Row]) -> str:
    deciding = v.get("deciding") or []
    if v["verdict"] == "conformant":
        return f"all judged ({len(deciding)})" if deciding else "all judged"
    return ", ".join(deciding) or "-"


def aggregate_findings(rows: list[Row]) -> list[dict]:
    """Reference findings, one per (check, reference, metric, status, deviation) over models × dtypes."""
    return _aggregate([r for r in reference_rows(rows) if r.status in FINDING])


def _aggregate(found: list[Row]) -> list[dict]:
    out = []
    for (check, ref, metric, status, dev), rs in _by(found, lambda r: (r.check, r.reference, r.metric, r.status,
                                                                        r.deviation)).items():
        m, w = max_margin(rs)
        w = w or rs[0]
        val, tol = fmt_vs(w.value, w.tolerance)
        out.append({"check": check, "reference": ref or "reference", "metric": metric, "status": status,
                    "deviation": dev, "models": _uniq(r.place for r in rs), "dtypes": _uniq(r.dtype for r in rs),
                    "n": len(rs), "worst": val + (f" (needs {w.op} {tol})" if w.tolerance is not None else ""),
                    "where": where(w), "message": w.message})
    order = {c: i for i, c in enumerate(CHECK_ORDER)}
    return sorted(out, key=lambda f: order.get(f["check"], 99))


def _card_deviation(variant: str, dev_id: str):
    from .cards import CARDS
    card = CARDS.get(variant)
    return next((d for d in (card.deviations if card else ()) if d.id == dev_id), None)


def departures(rows: list[Row]) -> dict:
    """The subject's departures from the papers over the whole run (for a subject other than ours,
    e.g. peft): each declared deviation observed on the subject's rows (xfail, or re-judged under a
    declared tolerance), grouped by deviation id over the cards, with its reason and source from the
    card; and every undeclared failure (fail, error) or stale declaration (xpass) of the subject."""
    subj = subject(rows)
    declared = []
    for dev_id, rs in _by([r for r in subj if r.deviation], lambda r: r.deviation).items():
        cards = _uniq(r.variant for r in rs)
        dev = next((d for d in (_card_deviation(c, dev_id) for c in cards) if d is not None), None)
        kind = dev.kind if dev is not None else ""
        seen = [r for r in rs if r.status == "xfail" or (kind == "tolerance" and r.status == "pass")]
        if not seen:
            continue
        counts = _by(seen, lambda r: r.status)
        where_ = "; ".join(
            f"{c} `{m}` on {', '.join(_uniq(r.place for r in g))} × "
            f"{', '.join(DTYPE_SHORT.get(d, d) for d in _uniq(r.dtype for r in g))}"
            for (c, m), g in _by(seen, lambda r: (r.check, r.metric)).items())
        declared.append({"id": dev_id, "cards": cards,
                         "by": ("peft" if dev.reference == "peft" else "the card (the method itself)")
                         if dev is not None else "-",
                         "observed": ", ".join(f"{len(v)} {k}" for k, v in counts.items()) + f": {where_}",
                         "reason": dev.reason if dev is not None else "-",
                         "source": dev.source if dev is not None else "-"})
    bad = [r for r in subj if r.status in BAD]
    undeclared = [f"{v}: {finding_line_text(f)}" for v, vrs in _by(bad, lambda r: r.variant).items()
                  for f in _aggregate(vrs)]
    return {"declared": declared, "undeclared": undeclared}


def finding_line_text(f: dict) -> str:
    declared = f"declared `{f['deviation']}`" if f["deviation"] else "undeclared"
    dtypes = ", ".join(DTYPE_SHORT.get(d, d) for d in f["dtypes"])
    return (f"{f['check']} `{f['metric']}` {f['status']} ({declared}) on "
            f"{', '.join(f['models'])} × {dtypes}; worst {f['worst']}")


def finding_line(variant: str, f: dict) -> str:
    return f"{variant}: {f['reference']} {finding_line_text(f)}"


# -- timing --------------------------------------------------------------------------------------
def _median_range(vals: list[float]) -> tuple[float, float, float] | None:
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def fmt_ratio(v: float) -> str:
    return _g(v, 3) if math.isfinite(v) else str(v)


def _ratio_text(stats, vs_base: bool = False) -> str:
    if stats is None:
        return "-"
    med, lo, hi = stats
    text = fmt_ratio(med)
    if vs_base and med < 1:
        text = f"≈1 (noise: {text})"  # ours runs the base plus the adapter: below 1 is timer noise
    if hi > lo:
        text += f" [{fmt_ratio(lo)}–{fmt_ratio(hi)}]"
    return text


def timing_summary(rows: list[Row], who: str = "ours", other: str = "peft") -> dict:
    """fwd+bwd ratios (median over the cells [min–max]) and peak memory medians of one variant: the
    subject (rows named ``who``: "ours", "peft", "third-party") against the base model and against
    ``other`` (the implementation it is compared with side by side)."""
    def vals(metric):
        return [r.value for r in rows if r.check == "timing" and r.metric == metric
                and isinstance(r.value, (int, float)) and math.isfinite(r.value)]
    out = {"vs_other": _ratio_text(_median_range(vals(f"fwd_bwd_ratio_vs_{other}"))),
           "vs_base": _ratio_text(_median_range(vals("fwd_bwd_ratio_vs_base")), vs_base=True),
           "cells": str(len(vals("fwd_bwd_ratio_vs_base")))}
    mem = []
    for w in ("base", who, other):
        v = vals(f"fwd_bwd_peak_mem_mb[{w}]")
        mem.append(fmt_ratio(statistics.median(v)) if v else "-")
    out["mem"] = " / ".join(mem)
    return out


def timing_shown(r: Row) -> bool:
    """Timing rows a report shows: the judged ones (subject/other, gated loosely), fwd+bwd subject/base
    and peak memory; the unjudged fwd-only ratio and millisecond medians stay in results.csv."""
    return (r.check != "timing" or r.metric == "-" or r.tolerance is not None or r.status != "pass"
            or any(r.metric.startswith(m) for m in TIMING_SHOWN))


# -- SUMMARY.md ----------------------------------------------------------------------------------
def _summary_rows(meta: dict, rows: list[Row], verdicts: dict) -> list[dict]:
    by_variant = _by(rows, lambda r: r.variant)
    subj_info = meta["subject"]
    summary = []
    for name, v in verdicts.items():
        v = _verdict(v)
        rs = by_variant.get(name, [])
        subj = subject(rs)
        by_check = _by(subj, lambda r: r.check)
        findings = aggregate_findings(rs)
        summary.append({"name": name, "impl": meta["implementations"].get(name, f"variants.{name}"),
                        "verdict": v["verdict"], "confidence": v["confidence"],
                        "deciding": deciding_text(v, rs),
                        "checks": {c: check_cell(by_check.get(c, [])) for c in SUMMARY_CHECKS},
                        "findings": [finding_line(name, f) for f in findings],
                        "timing": timing_summary(rs, subj_info["who"], subj_info["other"]),
                        "has_timing": any(r.check == "timing" for r in rs)})
    return summary


def check_labels(subj: dict) -> dict[str, str]:
    """SUMMARY column labels; the side-by-side parity check is named after whom it compares with."""
    labels = {c: CHECK_LABELS.get(c, c) for c in SUMMARY_CHECKS}
    labels["peft_parity"] = f"{subj['other']} parity"
    return labels


def render_summary(out: Path, meta: dict, rows: list[Row], verdicts: dict) -> None:
    """SUMMARY.md from the rows; the mutant table comes from DIR/mutants.json when it exists."""
    out = Path(out)
    mutants_path = out / "mutants.json"
    mutants = json.loads(mutants_path.read_text()) if mutants_path.exists() else None
    meta = _meta(meta)
    subj = meta["subject"]
    atomic_write(out / "SUMMARY.md", _env().get_template("summary.md.j2").render(
        meta=meta, subj=subj, summary=_summary_rows(meta, rows, verdicts), checks=SUMMARY_CHECKS,
        labels=check_labels(subj), mutants=mutants, overhead_note=OVERHEAD_NOTE,
        references=references_overview(list(verdicts), meta),
        departures=departures(rows) if subj["kind"] != "ours" else None))


# -- <variant>.md --------------------------------------------------------------------------------
def _cfg_value(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return fmt(v)
    return repr(list(v) if isinstance(v, tuple) else v)


def config_audited(tgt, meta: dict) -> dict:
    """The config each model was audited with: card.config (+ per-model overrides) through the
    implementation's Config, so defaults show too; falls back to the card's dict when that fails."""
    card = tgt.card
    base = {**card.config, "dtype": "float32", "seed": meta["seed"] if isinstance(meta["seed"], int) else 0}

    def effective(fields):
        if tgt.variant is None:  # not our runtime: the canonical fields the subject was given
            return dict(fields)
        try:
            cfg = tgt.variant.Config(**fields)
            if isinstance(cfg, variants.AdapterConfig):
                return cfg.to_dict(function_only=True)  # as the subject was given it
            return cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
        except Exception:  # noqa: BLE001 - a user's Config: show what the card says instead
            return dict(fields)

    common = effective(base)
    models = meta["models"] or list(card.model_overrides)
    overrides = {}
    for model in models:
        over = card.model_overrides.get(model)
        if over:
            eff = effective({**base, **over})
            overrides[model] = {k: v for k, v in eff.items() if common.get(k) != v}
    fields = []
    for k, v in common.items():
        per_model = "; ".join(f"{m}: {_cfg_value(o[k])}" for m, o in overrides.items() if k in o)
        fields.append({"name": k, "value": _cfg_value(v),
                       "source": "card" if k in card.config else ("run" if k in ("dtype", "seed") else "default"),
                       "per_model": per_model})
    return {"fields": fields, "overridden": list(overrides),
            "call": ", ".join(f"{k}={v!r}" for k, v in card.config.items())}


def _case_fields(tgt, case) -> dict:
    """The fields a config case audits: the card's config with the case's overrides, or the
    subject's own defaults (when it declares them) for a subject-defaults case."""
    if case.subject_defaults:
        try:
            return dict(tgt.subject.default_config(tgt.card.name))
        except Exception:  # noqa: BLE001 - a subject that declares none: its rows say n/a
            return {}
    return {**tgt.card.config, **case.fields}


def configs_audited(tgt, meta: dict, rows: list[Row]) -> list[dict]:
    """One line per config of the card (the main one first, then its corners and any --config ones):
    its id, what it sets, why it matters, where it ran and its worst subject status."""
    from .cards import ConfigCase
    card = tgt.card
    cases = {c.id: c for c in card.cases()}
    for cid in _uniq(r.config_id for r in rows):  # rows of a config the card does not list (--config)
        cases.setdefault(cid, ConfigCase(cid, {}, "given on the command line (--config)"))
    out = []
    for cid, case in cases.items():
        rs = [r for r in rows if r.config_id == cid]
        if case.subject_defaults:
            got = _case_fields(tgt, case)
            sets = ("the subject's defaults: " + ", ".join(f"{k}={_cfg_value(v)}" for k, v in got.items())
                    if got else "the subject's defaults (it declares none)")
        elif cid == card.config_id:
            sets = ", ".join(f"{k}={_cfg_value(v)}" for k, v in card.config.items()) or "-"
        else:
            sets = ", ".join(f"{k}={_cfg_value(v)}" for k, v in case.fields.items()) or "-"
        judged = [r for r in subject(rs) if r.status != "n/a"]
        out.append({"id": cid, "main": cid == card.config_id, "sets": sets, "why": case.why,
                    "models": ", ".join(_uniq(r.model for r in rs)) or "-",
                    "dtypes": ", ".join(DTYPE_SHORT.get(d, d) for d in _uniq(r.dtype for r in rs)) or "-",
                    "checks": "every selected check" if case.checks is None else ", ".join(
                        c for c in CHECK_ORDER if c in case.checks),
                    "status": worst(judged) if judged else ("n/a" if rs else "not run")})
    return out


def zero_grad_claims(tgt) -> list[dict]:
    """The zero-gradient claims of every config: each claim once, with the configs it holds under."""
    card = tgt.card
    seen: dict[tuple, list[str]] = {}
    claims = {}
    for case in card.cases():
        at = card.at(case)
        for t, z in at.zero_grads_at(_case_fields(tgt, case)).items():
            k = (t, z.reason, z.fraction, z.stays_zero)
            seen.setdefault(k, []).append(case.id)
            claims[k] = (t, z)
    n = len(card.cases())
    return [{"tensor": t, "z": z, "configs": "" if len(ids) == n else ", ".join(ids)}
            for k, ids in seen.items() for t, z in [claims[k]]]


def constant_factor(rs: list[Row]) -> str:
    """A relative error ‖a − b‖/‖b‖ that is the same on every failing cell (within 1%) is what a
    constant factor a = k·b gives: |k − 1|. Said only when at least two cells agree; it is a hint
    (other bugs can give equal errors), worded as one."""
    vals = [r.value for r in rs if isinstance(r.value, (int, float)) and math.isfinite(r.value)]
    if len(vals) < 2 or len(vals) != len(rs) or "rel_err" not in rs[0].metric or min(vals) < 0.05:
        return ""
    if max(vals) > 1.01 * min(vals):
        return ""
    e = statistics.median(vals)
    ks = [f"{fmt_ratio(1 + e)}×"] + ([f"{fmt_ratio(1 - e)}×"] if e != 1 else [])
    return (f"; the same relative error ({fmt_ratio(e)}) on each: consistent with a scale off by "
            f"{' or '.join(ks)} (‖k·b − b‖/‖b‖ = |k − 1|)")


def failures(rows: list[Row]) -> list[dict]:
    """Failing subject rows (fail, xpass, error) grouped by check, worst first, with a diagnosis."""
    bad = [r for r in subject(rows) if r.status in BAD]
    cells = _by(rows, lambda r: (r.check, r.place, r.dtype))
    groups = []
    by_check = _by(bad, lambda r: r.check)
    for check in [c for c in CHECK_ORDER if c in by_check] + [c for c in by_check if c not in CHECK_ORDER]:
        rs = by_check[check]
        rs = sorted(rs, key=lambda r: (r.status != "error", -(r.margin if r.margin is not None
                                                                and not math.isnan(r.margin) else math.inf)))
        all_cells = _uniq((r.place, r.dtype) for r in subject(rows) if r.check == check)
        patterns = []
        for metric, mrs in _by(rs, lambda r: r.metric).items():
            cells_failing = _uniq((r.place, r.dtype) for r in mrs)
            if metric == "-" or len(all_cells) < 2:
                continue
            dts = _uniq(d for _, d in cells_failing)
            mods = _uniq(m for m, _ in cells_failing)
            scope = ("every model × dtype audited" if len(cells_failing) == len(all_cells) else
                     f"{len(cells_failing)} of {len(all_cells)} cells ({', '.join(mods)} × "
                     f"{', '.join(DTYPE_SHORT.get(d, d) for d in dts)})")
            patterns.append(f"`{metric}` fails on {scope}" + constant_factor(mrs))
        shown = []
        for r in rs[:MAX_FAILURES_PER_CHECK]:
            val, tol = fmt_vs(r.value, r.tolerance)
            shown.append({"model": r.place, "dtype": r.dtype, "metric": r.metric, "value": val,
                          "bound": "-" if r.tolerance is None else f"{r.op} {tol}", "status": r.status,
                          "margin": fmt_margin(r.margin), "message": r.message, "deviation": r.deviation,
                          "diagnosis": diagnosis(r, cells.get((r.check, r.place, r.dtype), []))})
        groups.append({"check": check, "n": len(rs), "rows": shown, "more": len(rs) - len(shown),
                       "patterns": patterns})
    return groups


def deviations_observed(card, rows: list[Row]) -> list[dict]:
    out = []
    for d in card.deviations:
        rs = [r for r in rows if r.deviation == d.id]
        counts = _by(rs, lambda r: r.status)
        m, w = max_margin(rs)
        observed = ", ".join(f"{len(v)} {k}" for k, v in sorted(counts.items(), key=lambda kv: SEVERITY.index(kv[0])
                                                                if kv[0] in SEVERITY else 9)) or "no row in this run"
        if w is not None and w.value is not None:
            observed += f"; worst {fmt_vs(w.value, d.magnitude if d.magnitude is not None else w.tolerance)[0]} ({where(w)})"
        covers = (f"tolerance {fmt(d.tolerance)}" if d.kind == "tolerance" else
                  f"up to {fmt(d.magnitude)}" if d.magnitude is not None else "-")
        out.append({"id": d.id, "check": d.check, "metric": d.metric, "reference": d.reference, "kind": d.kind,
                    "covers": covers, "observed": observed, "reason": d.reason, "source": d.source,
                    "where": ", ".join(filter(None, [", ".join(d.models) if d.models else "",
                                                     ", ".join(d.dtypes) if d.dtypes else ""])) or "all"})
    return out


def _cell_text(r: Row, with_bound: bool = False) -> str:
    """One measurement in a table cell: its value (with its own bound when the metric's bounds
    differ between cells), and its status unless it passes."""
    if r.status == "n/a":
        return "n/a"
    if r.status == "error":
        return "**error**"
    val, tol = fmt_vs(r.value, r.tolerance)
    if r.check == "timing" and r.metric == "fwd_bwd_ratio_vs_base" and isinstance(r.value, float) and r.value < 1:
        val += " (noise)"  # ours runs the base plus the adapter: below 1 is timer noise
    if with_bound and r.tolerance is not None and not (r.op == "==" and r.status == "pass"):
        val += f" ({OPS.get(r.op, r.op)} {tol})"
    if r.status == "pass":
        return val
    return f"**{val} {r.status}**" if r.status in BAD else f"{val} {r.status}"


def _bound_text(rs: list[Row]) -> str | None:
    """The metric's bound when all its cells share one, else None (each cell then shows its own);
    printed with the most digits any of its values needed to differ from it."""
    judged = [r for r in rs if r.tolerance is not None]
    if not judged:
        return "-"
    if len(_uniq((r.op, r.tolerance) for r in judged)) == 1:
        return f"{judged[0].op} {max((fmt_vs(r.value, r.tolerance)[1] for r in judged), key=len)}"
    return None


def measurement_tables(rows: list[Row]) -> list[dict]:
    """Per check: one row per metric (subject rows, then reference rows), one column per model × dtype."""
    tables = []
    by_check = _by(rows, lambda r: r.check)
    for check in [c for c in CHECK_ORDER if c in by_check] + [c for c in by_check if c not in CHECK_ORDER]:
        crs = by_check[check]
        shown = [r for r in crs if timing_shown(r)]
        cells = _uniq((r.place, r.dtype) for r in shown)
        lines = []
        key = lambda r: (r.about == "reference", r.reference if r.about == "reference" else "", r.metric)
        for (is_ref, ref, metric), rs in sorted(_by(shown, key).items(), key=lambda kv: kv[0][0]):
            at = _by(rs, lambda r: (r.place, r.dtype))
            m, w = max_margin(rs)
            note = (w or rs[0]).message
            common = _bound_text(rs)
            lines.append({"metric": metric + (f" *(about {ref or 'the reference'})*" if is_ref else ""),
                          "bound": common or "per cell", "margin": fmt_margin(m),
                          "values": [", ".join(_cell_text(r, common is None) for r in at.get(c, [])) or ""
                                     for c in cells],
                          "note": note})
        subj = subject(crs)
        status = worst(subj) if subj else "-"
        m, _ = max_margin([r for r in subj if r.status == worst_status(subj)])
        findings = [r for r in reference_rows(crs) if r.status in FINDING]
        summary = status + (f", worst margin {fmt_margin(m)}" if m is not None else "")
        if findings:
            summary += f"; {len(findings)} reference finding row{'s' if len(findings) != 1 else ''}"
        tables.append({"check": check, "summary": summary, "n": len(crs),
                       "cells": [f"{mdl} {DTYPE_SHORT.get(d, d)}" for mdl, d in cells], "lines": lines,
                       "hidden": len(crs) - len(shown)})
    return tables


def check_overview(rows: list[Row]) -> list[dict]:
    """Per check of the subject: status counts, worst margin and where it is."""
    out = []
    by_check = _by(subject(rows), lambda r: r.check)
    for check in [c for c in CHECK_ORDER if c in by_check]:
        rs = by_check[check]
        counts = _by(rs, lambda r: r.status)
        m, w = max_margin(rs)
        worst_row = "-"
        if w is not None:
            val, tol = fmt_vs(w.value, w.tolerance)
            worst_row = f"`{w.metric}` {where(w)}: {val} ({w.op} {tol})"
        out.append({"check": check, "status": worst(rs),
                    "counts": ", ".join(f"{len(counts[s])} {s}" for s in SEVERITY if s in counts),
                    "margin": fmt_margin(m), "worst": worst_row})
    return out


def verdict_reasons(v: dict, rows: list[Row]) -> list[str]:
    """The verdict's reasons without the failing rows it lists (the Failures section has them all),
    replaced by one line that counts them."""
    bad = [r for r in subject(rows) if r.status in BAD]
    prefixes = tuple(f"{r.check} [{r.place}/{r.dtype}] {r.metric} " for r in bad)
    out = [x for x in v["reasons"] if not (prefixes and x.startswith(prefixes))
           and not re.match(r"^\.\.\. and \d+ more failing rows", x)]
    if bad:
        checks = _uniq(r.check for r in bad)
        out.insert(0, f"{len(bad)} failing row{'s' if len(bad) != 1 else ''} (fail, xpass or error) in "
                      f"{', '.join(checks)}: see Failures")
    return out


def variant_subject(tgt, meta: dict) -> dict:
    """Who was audited on this card (the target's own subject) and against which references."""
    subj = tgt.subject
    kind = getattr(subj, "kind", "ours")
    label = _with_version(subj.describe(), getattr(subj, "version", "") or "")
    refs, src = references_of(tgt.card.name, meta, tgt.card, subj)
    try:
        from .twins import other_implementation
        other = other_implementation(tgt.card, subj) or OTHER.get(kind, "peft")
    except Exception:  # noqa: BLE001 - a card the twins cannot place: the run-wide other
        other = OTHER.get(kind, "peft")
    return {"kind": kind, "label": label, "gloss": SUBJECT_GLOSS.get(kind, "the implementation under audit"),
            "impl": tgt.label if tgt.label not in (label, subj.describe()) else "",
            "references": refs, "references_text": references_text(refs, meta) if refs else "not recorded",
            "references_source": src, "other": other, "short": {"third-party": "subject"}.get(kind, kind)}


def fused_notes(rows: list[Row]) -> list[str]:
    """One line per model where the placement check found fused layers (Phi-3's qkv_proj, GPT-2's
    c_attn) adapted as one layer beyond the card's roles, from the placement rows' own messages."""
    seen: dict[str, str] = {}
    for r in rows:
        if r.check == "placement" and FUSED_NOTE in r.message and r.model not in seen:
            seen[r.model] = r.message.split(FUSED_NOTE, 1)[1]
    return [f"{m}: beyond the {what}" for m, what in seen.items()]


def render_variant(env: jinja2.Environment, tgt, meta: dict, rows: list[Row], verdict: dict | None) -> str:
    card = tgt.card
    rs = [r for r in rows if r.variant == card.name]
    v = _verdict(verdict)
    excerpts, excerpt_note = subject_excerpts(tgt)
    return env.get_template("variant.md.j2").render(
        card=card, impl=tgt.label, meta=meta, subj=variant_subject(tgt, meta), verdict=v,
        deciding=deciding_text(v, rs), reasons=verdict_reasons(v, rs),
        config=config_audited(tgt, meta), configs=configs_audited(tgt, meta, rs), zero_claims=zero_grad_claims(tgt),
        fused=fused_notes(rs),
        overview=check_overview(rs), failures=failures(rs),
        deviations=deviations_observed(card, rs), findings=aggregate_findings(rs),
        excerpts=excerpts, excerpt_note=excerpt_note, tables=measurement_tables(rs),
        dtypes_supported=list(card.dtypes), overhead_note=OVERHEAD_NOTE)


def render(out: Path, meta: dict, rows: list[Row], verdicts: dict, targets) -> None:
    """Every <variant>.md, results.csv, then SUMMARY.md."""
    out = Path(out)
    env = _env()
    m = _meta(meta)
    for tgt in targets:
        atomic_write(out / f"{tgt.card.name}.md", render_variant(env, tgt, m, rows, verdicts.get(tgt.card.name)))
    write_csv(out, rows)
    render_summary(out, meta, rows, verdicts)
