"""The rows summed up per check and per variant: the verdict's text, SUMMARY.md's row per variant
(check cells, findings, timing), a variant's check overview and its measurement tables.

Timing on the zoo's tiny models is overhead-bound: only the fwd+bwd ratios and peak memory are
shown (fwd-only and millisecond medians stay in results.csv), so no column can contradict another.
"""
from __future__ import annotations

import math
import re
import statistics

from .checks import CHECK_ORDER
from .diagnosis import aggregate_findings, finding_line
from .report_format import DTYPE_SHORT, cell_text, fmt_margin, fmt_ratio, fmt_vs, where
from .report_rows import (FINDING, SEVERITY, group_by, max_margin, reference_rows, subject_rows, uniq, worst,
                          worst_status)
from .rows import BAD, Row
from .verdict import CONCERNS, coverage_text

SUMMARY_CHECKS = ("identity_at_init", "init", "grad_flow", "paper_parity", "peft_parity", "lycoris_parity", "properties",
                  "placement", "save_load", "merge", "training", "robustness")
CHECK_LABELS = {"identity_at_init": "identity", "grad_flow": "grad flow", "paper_parity": "paper parity",
                "peft_parity": "peft parity", "lycoris_parity": "LyCORIS parity", "save_load": "save/load"}
TIMING_SHOWN = ("fwd_bwd_ratio_vs_base", "fwd_bwd_peak_mem_mb[")  # plus every judged timing row


# -- the verdict ---------------------------------------------------------------------------------
def verdict_with_defaults(v: dict | None) -> dict:
    v = dict(v or {})
    v.setdefault("verdict", "not audited")
    v.setdefault("confidence", "none")
    v.setdefault("references_agreeing", [])
    v.setdefault("reasons", [])
    v.setdefault("deciding", [])
    v.setdefault("concerns", {})
    v.setdefault("deciding_concerns", [])
    v.setdefault("headline", v["verdict"])
    v.setdefault("required", None)
    return v


def deciding_text(v: dict, rows: list[Row]) -> str:
    deciding = v.get("deciding") or []
    if v["verdict"] == "conformant":
        return f"all judged ({len(deciding)})" if deciding else "all judged"
    return ", ".join(deciding) or "-"


def verdict_reasons(v: dict, rows: list[Row]) -> list[str]:
    """The verdict's reasons without the failing rows it lists (the Failures section has them all),
    replaced by one line that counts them."""
    bad = [r for r in subject_rows(rows) if r.status in BAD]
    prefixes = tuple(f"{r.check} [{r.place}/{r.dtype}] {r.metric} " for r in bad)
    out = [x for x in v["reasons"] if not (prefixes and x.startswith(prefixes))
           and not re.match(r"^\.\.\. and \d+ more failing rows", x)]
    if bad:
        checks = uniq(r.check for r in bad)
        out.insert(0, f"{len(bad)} failing row{'s' if len(bad) != 1 else ''} (fail, xpass or error) in "
                      f"{', '.join(checks)}: see Failures")
    return out


# -- per check -----------------------------------------------------------------------------------
def check_cell(rows: list[Row]) -> str:
    """SUMMARY cell of one check: status word and worst margin among the rows of that status; where the
    worst status differs between dtypes, one such text per dtype ("**error** bf16 · pass 0.1 fp32"), else
    where it differs between models, the models that are worse apart from the rest."""
    judged = [r for r in rows if r.status != "n/a"]
    by_dtype = group_by(judged, lambda r: r.dtype)
    if len({worst_status(rs) for rs in by_dtype.values()}) > 1:
        return " · ".join(f"{_status_cell(rs)} {DTYPE_SHORT.get(d, d)}" for d, rs in by_dtype.items())
    by_model = group_by(judged, lambda r: r.model)
    states = {m: worst_status(rs) for m, rs in by_model.items()}
    if len(set(states.values())) > 1:
        top = min(states.values(), key=SEVERITY.index)  # SEVERITY runs worst first
        worse = [m for m, st in states.items() if st == top]
        rest = [r for m, rs in by_model.items() if m not in worse for r in rs]
        return (f"{_status_cell([r for m in worse for r in by_model[m]])} {', '.join(worse)} · "
                f"{_status_cell(rest)} elsewhere")
    return _status_cell(rows)


def _status_cell(rows: list[Row]) -> str:
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


def check_overview(rows: list[Row]) -> list[dict]:
    """Per check of the subject: status counts, worst margin and where it is."""
    out = []
    by_check = group_by(subject_rows(rows), lambda r: r.check)
    for check in [c for c in CHECK_ORDER if c in by_check]:
        rs = by_check[check]
        counts = group_by(rs, lambda r: r.status)
        m, w = max_margin(rs)
        worst_row = "-"
        if w is not None:
            val, tol = fmt_vs(w.value, w.tolerance)
            worst_row = f"`{w.metric}` {where(w)}: {val} ({w.op} {tol})"
        out.append({"check": check, "status": worst(rs),
                    "counts": ", ".join(f"{len(counts[s])} {s}" for s in SEVERITY if s in counts),
                    "margin": fmt_margin(m), "worst": worst_row})
    return out


def _bound_text(rs: list[Row]) -> str | None:
    """The metric's bound when all its cells share one, else None (each cell then shows its own);
    printed with the most digits any of its values needed to differ from it."""
    judged = [r for r in rs if r.tolerance is not None]
    if not judged:
        return "-"
    if len(uniq((r.op, r.tolerance) for r in judged)) == 1:
        return f"{judged[0].op} {max((fmt_vs(r.value, r.tolerance)[1] for r in judged), key=len)}"
    return None


def measurement_tables(rows: list[Row]) -> list[dict]:
    """Per check: one row per metric (subject rows, then reference rows), one column per model × dtype."""
    tables = []
    by_check = group_by(rows, lambda r: r.check)
    for check in [c for c in CHECK_ORDER if c in by_check] + [c for c in by_check if c not in CHECK_ORDER]:
        crs = by_check[check]
        shown = [r for r in crs if timing_shown(r)]
        cells = uniq((r.place, r.dtype) for r in shown)
        lines = []
        key = lambda r: (r.about == "reference", r.reference if r.about == "reference" else "", r.metric)
        for (is_ref, ref, metric), rs in sorted(group_by(shown, key).items(), key=lambda kv: kv[0][0]):
            at = group_by(rs, lambda r: (r.place, r.dtype))
            m, w = max_margin(rs)
            note = (w or rs[0]).message
            common = _bound_text(rs)
            lines.append({"metric": metric + (f" *(about {ref or 'the reference'})*" if is_ref else ""),
                          "bound": common or "per cell", "margin": fmt_margin(m),
                          "values": [", ".join(cell_text(r, common is None) for r in at.get(c, [])) or ""
                                     for c in cells],
                          "note": note})
        subj = subject_rows(crs)
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


# -- timing --------------------------------------------------------------------------------------
def timing_shown(r: Row) -> bool:
    """Timing rows a report shows: the judged ones (subject/other, gated loosely), fwd+bwd subject/base
    and peak memory; the unjudged fwd-only ratio and millisecond medians stay in results.csv."""
    return (r.check != "timing" or r.metric == "-" or r.tolerance is not None or r.status != "pass"
            or any(r.metric.startswith(m) for m in TIMING_SHOWN))


def _median_range(vals: list[float]) -> tuple[float, float, float] | None:
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


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


# -- SUMMARY.md rows -----------------------------------------------------------------------------
def concern_cell(c: dict | None) -> str:
    """One concern's verdict in a SUMMARY cell ("-" when it was not audited; the declared departure that
    kept it from being compared, if one did)."""
    if not c or c["verdict"] == "not audited":
        return f"not audited (declared: {', '.join(c['deciding'])})" if c and c["deciding"] else "-"
    if c["verdict"] == "non-conformant":
        return f"**non-conformant** ({', '.join(c['deciding'])})"
    return c["verdict"] + (f" ({', '.join(c['deciding'])})" if c["verdict"] == "partial" else "")


def summary_rows(meta: dict, rows: list[Row], verdicts: dict) -> list[dict]:
    by_variant = group_by(rows, lambda r: r.variant)
    subj_info = meta["subject"]
    summary = []
    for name, v in verdicts.items():
        v = verdict_with_defaults(v)
        rs = by_variant.get(name, [])
        subj = subject_rows(rs)
        by_check = group_by(subj, lambda r: r.check)
        findings = aggregate_findings(rs)
        concerns = v.get("concerns") or {}
        summary.append({"name": name, "impl": meta["implementations"].get(name, f"variants.{name}"),
                        "verdict": v["verdict"], "confidence": v["confidence"],
                        "coverage": coverage_text(v.get("coverage")).replace("judged on ", "") or "-",
                        "deciding": deciding_text(v, rs),
                        "deciding_concerns": ("all audited" if v["verdict"] == "conformant" else
                                              ", ".join(v.get("deciding_concerns") or []) or "-"),
                        "concerns": {c: concern_cell(concerns.get(c)) for c in CONCERNS},
                        "headline": v.get("headline") or v["verdict"],
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
