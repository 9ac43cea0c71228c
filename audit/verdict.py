"""Verdicts judge the audited implementation (the subject), from its own rows only.

- conformant: every judged subject measurement passes, and at least one parity check against a
  reference (paper formula, peft, a port) was judged;
- partial: failures only where the subject's card declares its own deviation (xfail, within the
  declared magnitude);
- non-conformant: an undeclared failure, an xpass (a declared deviation no longer observed) or an
  error row;
- not audited: no subject measurement was judged, or no parity check was (say ``--checks training``
  alone): passing rows alone do not make a conformance claim.

Rows with ``about == "reference"`` audit the external reference itself (peft's layers against the
paper, peft's default init or targets): they are *reference findings*, reported on their own and
never part of the subject's verdict. Confidence counts the independent references whose parity
checks ran and passed: 2 high, 1 medium, 0 low (none when nothing was judged).
"""
from __future__ import annotations

import math
from collections import defaultdict

from .rows import BAD, Row

PARITY = (("paper_parity", "paper"), ("peft_parity", "external"))
FINDING = ("fail", "xfail", "xpass", "error")


def fmt_number(v: float | None) -> str:
    """Enough digits that a failing value never prints equal to its tolerance."""
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if float(v) == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.3e}"


def describe(r: Row) -> str:
    val = fmt_number(r.value)
    tol = "" if r.tolerance is None else f" (needs {r.op} {fmt_number(r.tolerance)})"
    if r.tolerance is not None and r.value is not None and fmt_number(r.value) == fmt_number(r.tolerance):
        val, tol = repr(float(r.value)), f" (needs {r.op} {float(r.tolerance)!r})"
    return (f"{r.check} [{r.place}/{r.dtype}] {r.metric} = {val}{tol}: {r.status}"
            + (f" ({r.message})" if r.message else ""))


def check_margins(rows: list[Row]) -> dict[str, dict]:
    """Per check: the worst-status summary and the row with the largest margin (value/tolerance)."""
    out: dict[str, dict] = {}
    by_check: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_check[r.check].append(r)
    for check, rs in by_check.items():
        judged = [r for r in rs if r.margin is not None]
        worst = max(judged, key=lambda r: r.margin, default=None)
        statuses = defaultdict(int)
        for r in rs:
            statuses[r.status] += 1
        out[check] = {"counts": dict(statuses),
                      "margin": None if worst is None else worst.margin,
                      "worst": None if worst is None else {"metric": worst.metric, "model": worst.model,
                                                           "dtype": worst.dtype, "value": worst.value,
                                                           "tolerance": worst.tolerance, "op": worst.op}}
    return out


def _finding(r: Row) -> dict:
    return {"check": r.check, "metric": r.metric, "model": r.model, "dtype": r.dtype, "value": r.value,
            "tolerance": r.tolerance, "op": r.op, "status": r.status, "deviation": r.deviation,
            "reference": r.reference, "message": r.message}


def verdict_of(rs: list[Row]) -> dict:
    subject = [r for r in rs if r.about != "reference"]
    judged = [r for r in subject if r.status not in ("n/a", "error")]
    bad = [r for r in subject if r.status in BAD]
    declared = [r for r in subject if r.status == "xfail"]
    refs = []
    for check, name in PARITY:
        ran = [r for r in subject if r.check == check and r.status != "n/a"]
        if ran and all(r.status in ("pass", "xfail") for r in ran):
            refs.append(next((r.reference for r in ran if r.reference), name))
    parity_judged = any(r.check in dict(PARITY) for r in judged)
    if bad:
        verdict, deciding = "non-conformant", sorted({r.check for r in bad})
    elif not judged or not parity_judged:
        verdict, deciding = "not audited", []
    elif declared:
        verdict, deciding = "partial", sorted({r.check for r in declared})
    else:
        verdict, deciding = "conformant", sorted({r.check for r in judged})
    reasons = [describe(r) for r in bad[:12]]
    if len(bad) > 12:
        reasons.append(f"... and {len(bad) - 12} more failing rows")
    reasons += [f"declared deviation {d} (xfail)" for d in sorted({r.deviation for r in declared})]
    if verdict == "not audited":
        ran = sorted({r.check for r in judged})
        reasons.append("no subject measurement was judged" if not judged else
                       f"no parity check against a reference was judged (judged: {', '.join(ran)}); "
                       "passing rows alone make no conformance claim")
    if not reasons:
        reasons = [f"all {sum(r.status == 'pass' for r in subject)} measurements pass"
                   f" ({sum(r.status == 'n/a' for r in subject)} n/a)"]
    confidence = "none" if verdict == "not audited" else {2: "high", 1: "medium"}.get(len(refs), "low")
    return {"verdict": verdict, "confidence": confidence, "references_agreeing": refs, "reasons": reasons,
            "deciding": deciding, "check_margins": check_margins(subject),
            "counts": {s: sum(r.status == s for r in subject) for s in ("pass", "fail", "xfail", "xpass", "error", "n/a")},
            "reference_findings": [_finding(r) for r in rs if r.about == "reference" and r.status in FINDING]}


def verdicts(rows: list[Row]) -> dict[str, dict]:
    by_variant: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_variant[r.variant].append(r)
    return {v: verdict_of(rs) for v, rs in by_variant.items()}
