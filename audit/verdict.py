"""Verdicts: conformant (all pass), partial (failures only where a deviation is declared),
non-conformant (any undeclared failure, xpass or error). Confidence counts independent references
whose parity checks ran and passed (paper formula; peft or the antipasto3 port)."""
from __future__ import annotations

from collections import defaultdict

from .rows import Row

EXTERNAL = ("peft", "antipasto3")


def _fmt(r: Row) -> str:
    val = "-" if r.value is None else f"{r.value:.3g}"
    tol = "" if r.tolerance is None else f" (needs {r.op} {r.tolerance:.3g})"
    return f"{r.check} [{r.model}/{r.dtype}] {r.metric} = {val}{tol}: {r.status}" + (f" — {r.message}" if r.message else "")


def verdicts(rows: list[Row]) -> dict[str, dict]:
    by_variant: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_variant[r.variant].append(r)
    out = {}
    for v, rs in by_variant.items():
        bad = [r for r in rs if r.status in ("fail", "xpass", "error")]
        declared = [r for r in rs if r.status == "xfail"]
        verdict = "non-conformant" if bad else ("partial" if declared else "conformant")
        refs = []
        for check, name in (("paper_parity", "paper"), ("peft_parity", "external")):
            ran = [r for r in rs if r.check == check and r.status != "n/a"]
            if ran and all(r.status in ("pass", "xfail") for r in ran):
                refs.append(next((r.reference for r in ran if r.reference), name))
        confidence = {2: "high", 1: "medium"}.get(len(refs), "low")
        reasons = [_fmt(r) for r in bad[:12]]
        if len(bad) > 12:
            reasons.append(f"... and {len(bad) - 12} more failing rows")
        devs = sorted({r.deviation for r in declared})
        reasons += [f"declared deviation {d} (xfail)" for d in devs]
        if not reasons:
            reasons = [f"all {sum(r.status == 'pass' for r in rs)} measurements pass"
                       f" ({sum(r.status == 'n/a' for r in rs)} n/a)"]
        out[v] = {"verdict": verdict, "confidence": confidence, "references_agreeing": refs,
                  "reasons": reasons,
                  "counts": {s: sum(r.status == s for r in rs) for s in ("pass", "fail", "xfail", "xpass", "error", "n/a")}}
    return out
