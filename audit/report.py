"""Render SUMMARY.md and <variant>.md from the rows with jinja2 (numbers straight from the rows)."""
from __future__ import annotations

import inspect
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

import jinja2

from .checks import CHECK_ORDER
from .results import atomic_write
from .rows import Row

SEVERITY = ("error", "fail", "xpass", "xfail", "pass", "n/a")
SUMMARY_CHECKS = ("identity_at_init", "grad_flow", "paper_parity", "peft_parity", "save_load")


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.3g}"
    return str(v)


def worst(rows: list[Row]) -> str:
    statuses = {r.status for r in rows}
    for s in SEVERITY:
        if s in statuses:
            counts = sum(r.status == s for r in rows)
            return f"{s} ({counts}/{len(rows)})" if s not in ("pass", "n/a") else s
    return "-"


def source_excerpts(variant_cls, max_lines: int = 14) -> list[dict]:
    """file:line and a short excerpt of what the implementation does (its hook and init)."""
    out = []
    for meth in ("forward", "forward_input", "init", "group_init"):
        fn = getattr(variant_cls, meth, None)
        if fn is None:
            continue
        owner = next((k for k in variant_cls.__mro__ if meth in vars(k)), None)
        if owner is None or owner.__module__ == "variants._base":
            continue
        try:
            lines, start = inspect.getsourcelines(fn)
            path = inspect.getsourcefile(fn)
        except (OSError, TypeError):
            continue
        try:
            path = os.path.relpath(path)
        except ValueError:
            pass
        body = "".join(lines[:max_lines]).rstrip() + ("\n    ..." if len(lines) > max_lines else "")
        out.append({"method": f"{owner.__name__}.{meth}", "where": f"{path}:{start}", "code": body})
    return out


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["cell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    return env


TIMING_RATIOS = ("fwd_ratio_vs_peft", "fwd_bwd_ratio_vs_peft", "fwd_ratio_vs_base", "fwd_bwd_ratio_vs_base")


def timing_summary(rows: list[Row]) -> dict[str, str]:
    """Median over the audited cells of each timing ratio, and of each median time (ms)."""
    out = {}
    for metric in TIMING_RATIOS + tuple(f"{k}[{w}]" for k in ("fwd_median_ms", "fwd_bwd_median_ms", "fwd_bwd_peak_mem_mb")
                                        for w in ("base", "ours", "peft")):
        vals = [r.value for r in rows if r.check == "timing" and r.metric == metric and r.value is not None]
        out[metric] = fmt(statistics.median(vals)) if vals else "-"
    return out


def _summary_rows(meta: dict, rows: list[Row], verdicts: dict) -> list[dict]:
    by_variant: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_variant[r.variant].append(r)
    summary = []
    for name in verdicts:
        rs = by_variant.get(name, [])
        pp = [r for r in rs if r.check == "paper_parity" and r.status != "n/a"]
        match = ("yes" if pp and all(r.status == "pass" for r in pp) else
                 "partial" if pp and all(r.status in ("pass", "xfail") for r in pp) else "no" if pp else "-")
        summary.append({"name": name, "impl": meta.get("implementations", {}).get(name, name), "match": match,
                        "checks": {c: worst([r for r in rs if r.check == c]) for c in SUMMARY_CHECKS},
                        "timing": timing_summary(rs), **verdicts[name]})
    return summary


def render_summary(out: Path, meta: dict, rows: list[Row], verdicts: dict) -> None:
    """SUMMARY.md from the rows; the mutant table comes from DIR/mutants.json when it exists."""
    mutants_path = out / "mutants.json"
    mutants = json.loads(mutants_path.read_text()) if mutants_path.exists() else None
    atomic_write(out / "SUMMARY.md", _env().get_template("summary.md.j2").render(
        meta=meta, summary=_summary_rows(meta, rows, verdicts), checks=SUMMARY_CHECKS, mutants=mutants))


def render(out: Path, meta: dict, rows: list[Row], verdicts: dict, targets) -> None:
    """Every <variant>.md, then SUMMARY.md."""
    env = _env()
    for tgt in targets:
        name = tgt.card.name
        rs = [r for r in rows if r.variant == name]
        groups = []
        for c in CHECK_ORDER:
            crs = [r for r in rs if r.check == c]
            if crs:
                groups.append({"check": c, "status": worst(crs), "rows": crs})
        doc = env.get_template("variant.md.j2").render(
            card=tgt.card, impl=tgt.label, meta=meta, verdict=verdicts.get(name), groups=groups,
            excerpts=source_excerpts(tgt.variant), timing=[r for r in rs if r.check == "timing"])
        atomic_write(out / f"{name}.md", doc)
    render_summary(out, meta, rows, verdicts)
