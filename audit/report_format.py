"""How the reports print numbers and table cells.

A value never looks equal to a tolerance it differs from (``fmt_vs``), and a margin never prints as
1 when it is not (``fmt_margin``).
"""
from __future__ import annotations

import math

from .rows import BAD, Row
from .verdict import fmt_number

DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
OPS = {"<=": "≤", ">=": "≥", "==": "=", ">": ">"}


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


def fmt_ratio(v: float) -> str:
    return _g(v, 3) if math.isfinite(v) else str(v)


def cell_text(r: Row, with_bound: bool = False) -> str:
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
