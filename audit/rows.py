"""Measurement rows: one per (variant, check, model, dtype, metric), judged against a tolerance."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["pass", "fail", "xfail", "xpass", "error", "n/a"]
Op = Literal["<=", ">", "==", ">=", "raises"]
STATUSES = ("pass", "fail", "xfail", "xpass", "error", "n/a")


def judge(value: float | None, op: str, tolerance: float | None) -> str:
    """pass/fail of ``value op tolerance``; a non-finite value always fails."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "fail"
    if op == "<=":
        return "pass" if value <= tolerance else "fail"
    if op == ">=":
        return "pass" if value >= tolerance else "fail"
    if op == ">":
        return "pass" if value > tolerance else "fail"
    if op == "==":
        return "pass" if value == tolerance else "fail"
    raise ValueError(f"unknown comparison {op!r}")


@dataclass
class Row:
    variant: str
    check: str
    model: str
    dtype: str
    metric: str
    value: float | None
    tolerance: float | None
    status: str
    deviation: str = ""
    message: str = ""
    op: str = "<="
    reference: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["value"], float) and not math.isfinite(d["value"]):
            d["value"] = str(d["value"])
        return d
