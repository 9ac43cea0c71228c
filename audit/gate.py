"""The regression gate: a fresh results.json against the committed baseline, cell by cell.

A cell is (variant, config, check, model, dtype, metric). Every judgement uses what each run measured
against *its own* tolerance, never a raw error against the baseline machine's: another CPU, BLAS
build or thread count rounds differently, and both a row's error and its tolerance move with it
(between two x86 hosts the trajectory errors of peft_parity grew 20× and their tolerances 7×; their
margins stayed under 0.3). The gate fails when

- a status gets worse (pass → xfail/fail/error/xpass, xfail → fail/xpass/error, or a measurement
  turning n/a): each run judged its row against its own tolerance or declared magnitude;
- a verdict drops, or a cell disappears;
- an error grows past what rounding can reach (``beyond_rounding``; derivation there).

Timing rows are reported, never gated (shared, noisy machines). New cells are listed, not failed.
The margins that moved most are reported too, so a drift stays visible without failing anyone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .results import atomic_write, read

# How far a declared departure's own size may move between machines. Most departures are fixed
# functions of the state (a missing scale, a detached norm) and move only by rounding, but some are
# the outcome of an iteration or a trajectory that rounding steers: peft's incremental-PCA EVA init
# (its subspace error went 0.445 -> 0.937 between two CPU capabilities of one host: ATEN_CPU_CAPABILITY
# and MKL_ENABLE_INSTRUCTIONS) and DoRA's detached gradient at a trained state (x1.34 between two
# hosts), 2.1x at most measured over the default audit's rows. DRIFT gives twice that.
DRIFT = 4.0
KEY = ("variant", "config", "check", "model", "dtype", "metric")
RANK = {"pass": 0, "xfail": 1, "xpass": 3, "fail": 3, "error": 3}
VERDICT_RANK = {"conformant": 0, "partial": 1, "not audited": 2, "non-conformant": 3}
GOOD_VERDICTS = ("conformant", "partial")
KEPT = (*KEY, "value", "tolerance", "op", "status", "deviation")


def key(row: dict) -> tuple:
    """A row's identity across runs (rows written before configs existed are the card's main config)."""
    return tuple(row.get(k, "main") if k == "config" else row[k] for k in KEY)


def make_baseline(results: dict) -> dict:
    """The baseline: every row's key, value, tolerance and status (messages dropped), and verdicts."""
    return {"meta": {"from": results["meta"].get("git_commit", ""), "versions": results["meta"].get("versions", {}),
                     "drift": DRIFT},
            "rows": [{k: r.get(k) for k in KEPT} for r in results["rows"]],
            "verdicts": {v: {"verdict": d["verdict"],
                             "concerns": {c: x["verdict"] for c, x in (d.get("concerns") or {}).items()}}
                         for v, d in results["verdicts"].items()}}


@dataclass
class GateReport:
    regressions: list[tuple[str, str, str, str]] = field(default_factory=list)  # (cell, was, now, why)
    new_cells: list[str] = field(default_factory=list)
    timing: list[tuple[str, str, str]] = field(default_factory=list)
    margins: list[tuple[str, float, float]] = field(default_factory=list)  # (cell, was, now): passing rows
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.regressions


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def _error_and_tolerance(row: dict) -> tuple[float, float] | None:
    """(error, tolerance) of a judged "<=" row with finite numbers; a negative value (an excess below
    its bound) counts as no error. None for anything else (lower bounds and exact claims: status only)."""
    v, t = row.get("value"), row.get("tolerance")
    if (row.get("op") != "<=" or row.get("status") in ("n/a", "error")
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (v, t))
            or t < 0):
        return None
    return max(float(v), 0.0), float(t)


def margin(row: dict) -> float | None:
    """value / the same run's tolerance of a judged "<=" row (None when it has none)."""
    et = _error_and_tolerance(row)
    if et is None or et[1] == 0:
        return None
    return et[0] / et[1]


def beyond_rounding(base: dict, new: dict, drift: float = DRIFT) -> str | None:
    """Why ``new``'s error cannot be ``base``'s moved by rounding, or None.

    Derivation. A row's error is e = |d + r|: d what the code departs from the float64 truth, r the
    run's rounding. Each run's tolerance t bounds its own |r| on its own machine (8 × the spread of a
    reference computation in that precision on the same input: audit/numerics.py; the seed sweep and
    the correct alternative implementations hold it). So e_new <= |d_new| + t_new and
    |d_old| <= e_old + t_old, and the same code on another machine has |d_new| <= DRIFT · |d_old|
    (DRIFT above: how far rounding can steer a departure computed by an iteration). Hence, for the
    same code on any machine,

        e_new <= DRIFT · (e_old + t_old) + t_new,   i.e.   margin_new <= DRIFT · (e_old + t_old) / t_new + 1.

    A row that passed (d within rounding) can move anywhere up to its tolerance on another machine and
    its status says when it leaves it; the bound matters for rows whose status does not follow their
    size: a declared departure (xfail) judged against a loose declared magnitude, a reference finding.
    """
    old, now = _error_and_tolerance(base), _error_and_tolerance(new)
    if old is None or now is None:
        return None
    (e_old, t_old), (e_new, t_new) = old, now
    bound = drift * (e_old + t_old) + t_new
    if e_new <= bound:
        return None
    return (f"error beyond rounding: {e_new:.3g} > {drift:g} x (baseline {e_old:.3g} + its tolerance {t_old:.3g}) "
            f"+ this run's tolerance {t_new:.3g}")


def _status(row: dict) -> str:
    m = margin(row)
    return row["status"] + (f" (margin {m:.3g})" if m is not None else "")


def compare(baseline: dict, results: dict, drift: float = DRIFT, require: tuple[str, ...] | None = None) -> GateReport:
    """The gate's findings; ``require``: only the rows and concern verdicts of these concerns (verdict.CONCERNS)."""
    from .verdict import concern_of
    rep = GateReport()
    new_rows = {key(r): r for r in results["rows"]}
    for b in baseline["rows"]:
        if require is not None and concern_of(b["check"]) not in require:
            continue
        k = key(b)
        cell = "/".join(str(x) for x in k)
        n = new_rows.get(k)
        if n is None:
            rep.regressions.append((cell, b["status"], "missing", "cell disappeared"))
            continue
        rep.compared += 1
        if b["check"] == "timing":
            if b.get("value") is not None and n.get("value") is not None and "ratio" in b["metric"]:
                rep.timing.append((cell, _fmt(b["value"]), _fmt(n["value"])))
            continue
        if n["status"] == "n/a" and b["status"] != "n/a":
            rep.regressions.append((cell, b["status"], "n/a", "measurement no longer taken"))
        elif b["status"] != "n/a" and RANK.get(n["status"], 3) > RANK.get(b["status"], 3):
            rep.regressions.append((cell, _status(b), _status(n), f"status worse (value {_fmt(n.get('value'))})"))
        elif why := beyond_rounding(b, n, drift):
            rep.regressions.append((cell, _fmt(b["value"]), _fmt(n["value"]), why))
        elif b["status"] == n["status"] == "pass" and (mb := margin(b)) is not None and (mn := margin(n)) is not None:
            rep.margins.append((cell, mb, mn))
    base_keys = {key(b) for b in baseline["rows"]}
    rep.new_cells = ["/".join(str(x) for x in k) for k in new_rows if k not in base_keys]
    for v, d in baseline.get("verdicts", {}).items():
        now = results["verdicts"].get(v, {})
        if require is None or not d.get("concerns"):  # the overall verdict (a baseline without concerns: that)
            pairs = [("verdict", d["verdict"], now.get("verdict", "missing"))]
        else:
            pairs = [(c, d["concerns"].get(c, "not audited"),
                      (now.get("concerns") or {}).get(c, {}).get("verdict", "missing")) for c in require]
        for what, was, is_now in pairs:
            if VERDICT_RANK.get(is_now, 4) > VERDICT_RANK.get(was, 4):
                rep.regressions.append((f"{v} ({what})", was, is_now, "verdict dropped"))
    return rep


def render(rep: GateReport, limit: int = 60) -> str:
    lines = [f"gate: {rep.compared} cells compared, {len(rep.regressions)} regressions, "
             f"{len(rep.new_cells)} new cells"]
    if rep.regressions:
        w = max(len(c) for c, *_ in rep.regressions[:limit])
        lines.append(f"\n{'cell (variant/config/check/model/dtype/metric)':<{w}}  {'baseline':>20}  {'now':>20}  why")
        for cell, was, now, why in rep.regressions[:limit]:
            lines.append(f"{cell:<{w}}  {was:>20}  {now:>20}  {why}")
        if len(rep.regressions) > limit:
            lines.append(f"... and {len(rep.regressions) - limit} more")
    if rep.new_cells:
        lines.append("\nnew cells (not gated): " + ", ".join(rep.new_cells[:10])
                     + (f" ... (+{len(rep.new_cells) - 10})" if len(rep.new_cells) > 10 else ""))
    grown = [(c, a, b) for c, a, b in sorted(rep.margins, key=lambda t: t[1] - t[2])[:5] if b > a]
    if grown:
        lines.append("\nmargins (error / the run's own tolerance) of passing rows that grew most "
                     "(reported, not gated: up to 1 is rounding on any machine):")
        lines += [f"  {c}: {a:.3g} -> {b:.3g}" for c, a, b in grown]
    worst = sorted(rep.timing, key=lambda t: -float(t[2]) / max(float(t[1]), 1e-9))[:5]
    if worst:
        lines.append("\ntiming ratios (reported, not gated), largest changes:")
        lines += [f"  {c}: {a} -> {b}" for c, a, b in worst]
    lines.append("\nPASS" if rep.ok else "\nFAIL: the results regress against the baseline")
    return "\n".join(lines)


def gate(baseline_path: Path, results_path: Path, drift: float = DRIFT) -> tuple[bool, str]:
    baseline = read(baseline_path)
    rep = compare(baseline, read(results_path), drift)
    return rep.ok, render(rep)


def write_baseline(results_path: Path, out: Path) -> Path:
    import json
    atomic_write(out, json.dumps(make_baseline(read(results_path)), indent=1) + "\n")
    return out


def compare_seeds(docs: list[dict], labels: list[str] | None = None) -> tuple[bool, str]:
    """Verdicts of the same audit run under several seeds, as a variant × seed table.

    ``docs`` are results.json documents; a column is labelled by its ``meta.seed`` (or ``labels``).
    Fails when any verdict is not conformant/partial (non-conformant, not audited, missing) or when
    a variant's verdicts differ across seeds.
    """
    if not docs:
        return False, "seeds: no results to compare"
    if labels is None:
        labels = [f"seed {d.get('meta', {}).get('seed', '?')}" for d in docs]
    variants = sorted({v for d in docs for v in d["verdicts"]})
    table = {v: [d["verdicts"].get(v, {}).get("verdict", "missing") for d in docs] for v in variants}
    bad = {v: sorted({x for x in row if x not in GOOD_VERDICTS}) for v, row in table.items()}
    bad = {v: xs for v, xs in bad.items() if xs}
    differ = [v for v, row in table.items() if len(set(row)) > 1]
    w0 = max([len("variant"), *(len(v) for v in variants)])
    widths = [max(len(lab), *(len(table[v][i]) for v in variants)) if variants else len(lab)
              for i, lab in enumerate(labels)]
    lines = ["  ".join([f"{'variant':<{w0}}", *(f"{lab:<{w}}" for lab, w in zip(labels, widths))]).rstrip()]
    for v in variants:
        mark = "  <- differs" if v in differ else ""
        lines.append("  ".join([f"{v:<{w0}}", *(f"{x:<{w}}" for x, w in zip(table[v], widths))]).rstrip() + mark)
    ok = bool(variants) and not bad and not differ
    lines.append("")
    if not variants:
        lines.append("FAIL: no verdicts in the results")
    if differ:
        lines.append(f"FAIL: verdicts differ across seeds for {', '.join(differ)}")
    for v, xs in bad.items():
        lines.append(f"FAIL: {v} is {' / '.join(xs)} under some seed")
    if ok:
        lines.append(f"PASS: {len(variants)} variants, {len(docs)} seeds, the same conformant/partial verdicts")
    return ok, "\n".join(lines)
