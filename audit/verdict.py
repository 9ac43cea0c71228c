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
checks ran and passed: 2 or more high, 1 medium, 0 low (none when nothing was judged).
"""
from __future__ import annotations

import math
from collections import defaultdict

from .rows import BAD, Row

PARITY = (("paper_parity", "paper"), ("peft_parity", "external"), ("lycoris_parity", "lycoris"))
FINDING = ("fail", "xfail", "xpass", "error")

# What a library author acts on: each check answers one concern. "equation" is what the method computes
# (its outputs, gradients, invariants and training, and whether its state has the layout the formula
# reads); the others are the init, merge, checkpoint, input validation, placement and speed parts
# around it. A check not listed counts as equation.
CONCERNS: dict[str, tuple[str, ...]] = {
    "equation": ("layout", "identity_at_init", "paper_parity", "peft_parity", "lycoris_parity", "grad_flow",
                 "properties", "training"),
    "init": ("init",),
    "merge": ("merge",),
    "checkpoint": ("save_load",),
    "input validation": ("robustness",),
    "placement": ("placement",),
    "speed": ("timing",),
}
CONCERN_OF = {check: concern for concern, checks in CONCERNS.items() for check in checks}


def concern_of(check: str) -> str:
    return CONCERN_OF.get(check, "equation")


def concern_verdict(concern: str, rows: list[Row]) -> dict:
    """One concern's verdict from the subject's rows of its checks: non-conformant on a failure, an
    xpass or an error; not audited when nothing was judged (for the equation: when no parity check
    against a reference was); partial when only declared deviations fail; else conformant."""
    judged = [r for r in rows if r.status not in ("n/a", "error")]
    bad = [r for r in rows if r.status in BAD]
    declared = [r for r in rows if r.status == "xfail"]
    parity = concern != "equation" or any(r.check in dict(PARITY) for r in judged)
    if bad:
        verdict, deciding = "non-conformant", sorted({r.check for r in bad})
    elif not judged or not parity:  # a declared departure that stopped the comparison (a layout) is named
        verdict, deciding = "not audited", sorted({r.check for r in declared})
    elif declared:
        verdict, deciding = "partial", sorted({r.check for r in declared})
    else:
        verdict, deciding = "conformant", sorted({r.check for r in judged})
    return {"verdict": verdict, "deciding": deciding,
            "counts": {s: sum(r.status == s for r in rows) for s in ("pass", "fail", "xfail", "xpass", "error", "n/a")}}


def overall(concerns: dict[str, dict], require: tuple[str, ...] | None = None) -> tuple[str, list[str]]:
    """(the overall verdict, the concerns that decided it) from the concern verdicts (only ``require``'d
    ones when given): non-conformant if any is; not audited if the equation was not audited (or, with
    ``require`` leaving the equation out, nothing required was); partial if any is; else conformant."""
    verdicts = {k: v["verdict"] for k, v in concerns.items() if require is None or k in require}
    bad = [k for k, v in verdicts.items() if v == "non-conformant"]
    if bad:
        return "non-conformant", bad
    equation_needed = require is None or "equation" in require
    if (equation_needed and verdicts.get("equation", "not audited") == "not audited") or \
            all(v == "not audited" for v in verdicts.values()):
        return "not audited", [k for k, v in concerns.items() if v["verdict"] == "not audited" and v["deciding"]
                               and k in verdicts]
    partial = [k for k, v in verdicts.items() if v == "partial"]
    if partial:
        return "partial", partial
    return "conformant", [k for k, v in verdicts.items() if v == "conformant"]


def headline(verdict: str, concerns: dict[str, dict]) -> str:
    """One line: the overall verdict and each concern's, e.g. "non-conformant: equation conformant,
    init conformant, checkpoint non-conformant (save_load), ..." (concerns not audited left out, but for
    one a declared departure kept from being compared: "equation not audited (declared: layout)")."""
    audited = {k: v for k, v in concerns.items() if v["verdict"] != "not audited" or v["deciding"]}
    if audited and all(v["verdict"] == verdict for v in audited.values()) and verdict == "conformant":
        return f"{verdict}: every concern audited ({', '.join(audited)})"
    parts = [f"{k} {v['verdict']}" + (f" ({', '.join(v['deciding'])})" if v["verdict"] in ("non-conformant", "partial")
                                       else f" (declared: {', '.join(v['deciding'])})" if v["verdict"] == "not audited"
                                       else "")
             for k, v in audited.items()]
    return f"{verdict}: {', '.join(parts) or 'nothing judged'}"


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


def coverage(subject: list[Row], configs: list[str] | None = None) -> dict[str, dict[str, list[str]]]:
    """How much a verdict rests on: the configs, models and dtypes with a judged subject row, each out of
    those the run audited for it, the configs out of ``configs`` too (every config of the card, where a run
    selected fewer): a corner config judged alone must not read like a full audit."""
    judged = [r for r in subject if r.status not in ("n/a", "error")]
    out = {}
    for what, read in (("configs", lambda r: r.config_id), ("models", lambda r: r.model), ("dtypes", lambda r: r.dtype)):
        out[what] = {"judged": sorted({read(r) for r in judged if r.model != "-"}),
                     "of": sorted({read(r) for r in subject if r.model != "-"})}
    out["configs"]["of"] = sorted(set(out["configs"]["of"]) | set(configs or ()))
    return out


def coverage_text(cov: dict | None) -> str:
    """"judged on 2/5 configs, 6/6 models, 1/2 dtypes" (names shown where one or two of several were judged)."""
    if not cov:
        return ""
    parts = []
    for what in ("configs", "models", "dtypes"):
        judged, of = cov[what]["judged"], cov[what]["of"]
        names = f" ({', '.join(judged)})" if 0 < len(judged) <= 2 and len(judged) < len(of) else ""
        parts.append(f"{len(judged)}/{len(of)} {what}{names}")
    return "judged on " + ", ".join(parts)


def verdict_of(rs: list[Row], require: tuple[str, ...] | None = None, configs: list[str] | None = None) -> dict:
    """A variant's verdict: per concern (``CONCERNS``) and overall (over the ``require``'d concerns,
    default all), with the reasons, the checks and concerns that decided it and per-check margins."""
    subject = [r for r in rs if r.about != "reference"]
    by_concern: dict[str, list[Row]] = defaultdict(list)
    for r in subject:
        by_concern[concern_of(r.check)].append(r)
    concerns = {c: concern_verdict(c, by_concern[c]) for c in CONCERNS if c in by_concern}
    verdict, deciding_concerns = overall(concerns, require)
    counted = [r for r in subject if require is None or concern_of(r.check) in require]
    bad = [r for r in counted if r.status in BAD]
    declared = [r for r in counted if r.status == "xfail"]
    judged = [r for r in counted if r.status not in ("n/a", "error")]
    refs = []
    for check, name in PARITY:
        ran = [r for r in subject if r.check == check and r.status != "n/a"]
        if ran and all(r.status in ("pass", "xfail") for r in ran):
            refs.append(next((r.reference for r in ran if r.reference), name))
    deciding = sorted({ch for c in deciding_concerns for ch in concerns[c]["deciding"]})
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
        reasons = [f"all {sum(r.status == 'pass' for r in counted)} measurements pass"
                   f" ({sum(r.status == 'n/a' for r in counted)} n/a)"]
    confidence = "none" if verdict == "not audited" else {0: "low", 1: "medium"}.get(len(refs), "high")
    return {"verdict": verdict, "confidence": confidence, "references_agreeing": refs, "reasons": reasons,
            "deciding": deciding, "deciding_concerns": deciding_concerns, "concerns": concerns,
            "headline": headline(verdict, concerns), "required": list(require) if require else None,
            "coverage": coverage(counted, configs),
            "check_margins": check_margins(subject),
            "counts": {s: sum(r.status == s for r in subject) for s in ("pass", "fail", "xfail", "xpass", "error", "n/a")},
            "reference_findings": [_finding(r) for r in rs if r.about == "reference" and r.status in FINDING]}


def verdicts(rows: list[Row], require: tuple[str, ...] | None = None,
             configs: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """Each variant's verdict; ``configs``: {variant: every config id of its card} for the coverage."""
    by_variant: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_variant[r.variant].append(r)
    return {v: verdict_of(rs, require, (configs or {}).get(v)) for v, rs in by_variant.items()}
