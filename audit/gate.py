"""The regression gate: a fresh results.json against the committed baseline, cell by cell.

A cell is (variant, check, model, dtype, metric). The gate fails when a status gets worse
(pass → fail/error/xpass, or a measurement turning n/a), when a verdict drops, when a cell
disappears, or when an error metric (a "<=" row) grows beyond FACTOR × max(its baseline, a tenth
of its tolerance): the floor keeps round-off-sized errors from flapping across CPUs. Timing rows
are reported, never gated (shared, noisy machines). New cells are listed, not failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .results import atomic_write, read

FACTOR = 4.0
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
                     "factor": FACTOR},
            "rows": [{k: r.get(k) for k in KEPT} for r in results["rows"]],
            "verdicts": {v: {"verdict": d["verdict"]} for v, d in results["verdicts"].items()}}


@dataclass
class GateReport:
    regressions: list[tuple[str, str, str, str]] = field(default_factory=list)  # (cell, was, now, why)
    new_cells: list[str] = field(default_factory=list)
    timing: list[tuple[str, str, str]] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.regressions


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def _grew(base: dict, new: dict, factor: float) -> bool:
    b, n = base.get("value"), new.get("value")
    if base.get("op") != "<=" or not isinstance(b, (int, float)) or not isinstance(n, (int, float)):
        return False
    tol = base.get("tolerance") or 0.0
    floor = max(abs(b), 0.1 * abs(tol), 1e-12)  # small errors may move a little across CPUs
    return n > factor * floor


def compare(baseline: dict, results: dict, factor: float = FACTOR) -> GateReport:
    rep = GateReport()
    new_rows = {key(r): r for r in results["rows"]}
    for b in baseline["rows"]:
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
            rep.regressions.append((cell, b["status"], n["status"], f"status worse (value {_fmt(n.get('value'))})"))
        elif _grew(b, n, factor):
            rep.regressions.append((cell, _fmt(b["value"]), _fmt(n["value"]), f"error grew more than {factor:g}x"))
    base_keys = {key(b) for b in baseline["rows"]}
    rep.new_cells = ["/".join(str(x) for x in k) for k in new_rows if k not in base_keys]
    for v, d in baseline.get("verdicts", {}).items():
        now = results["verdicts"].get(v, {}).get("verdict", "missing")
        if VERDICT_RANK.get(now, 4) > VERDICT_RANK.get(d["verdict"], 4):
            rep.regressions.append((f"{v} (verdict)", d["verdict"], now, "verdict dropped"))
    return rep


def render(rep: GateReport, limit: int = 60) -> str:
    lines = [f"gate: {rep.compared} cells compared, {len(rep.regressions)} regressions, "
             f"{len(rep.new_cells)} new cells"]
    if rep.regressions:
        w = max(len(c) for c, *_ in rep.regressions[:limit])
        lines.append(f"\n{'cell (variant/check/model/dtype/metric)':<{w}}  {'baseline':>14}  {'now':>14}  why")
        for cell, was, now, why in rep.regressions[:limit]:
            lines.append(f"{cell:<{w}}  {was:>14}  {now:>14}  {why}")
        if len(rep.regressions) > limit:
            lines.append(f"... and {len(rep.regressions) - limit} more")
    if rep.new_cells:
        lines.append("\nnew cells (not gated): " + ", ".join(rep.new_cells[:10])
                     + (f" ... (+{len(rep.new_cells) - 10})" if len(rep.new_cells) > 10 else ""))
    worst = sorted(rep.timing, key=lambda t: -float(t[2]) / max(float(t[1]), 1e-9))[:5]
    if worst:
        lines.append("\ntiming ratios (reported, not gated), largest changes: "
                     + "; ".join(f"{c}: {a} -> {b}" for c, a, b in worst))
    lines.append("\nPASS" if rep.ok else "\nFAIL: the results regress against the baseline")
    return "\n".join(lines)


def gate(baseline_path: Path, results_path: Path, factor: float = FACTOR) -> tuple[bool, str]:
    baseline = read(baseline_path)
    rep = compare(baseline, read(results_path), factor)
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
