"""Measurement rows: one per (variant, config, check, model, dtype, metric), judged against a tolerance."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["pass", "fail", "xfail", "xpass", "error", "n/a"]
Op = Literal["<=", ">", "==", ">=", "raises"]
About = Literal["subject", "reference"]
STATUSES = ("pass", "fail", "xfail", "xpass", "error", "n/a")
BAD = ("fail", "xpass", "error")


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


def within(value: float | None, op: str, bound: float) -> bool:
    """Is ``value`` on the allowed side of ``bound`` (a declared deviation's magnitude)? A magnitude of +inf
    covers an infinite distance too (a departure that writes −∞ where a finite value was: VB-LoRA's top-k
    checkpoint in peft); NaN is never covered."""
    if op not in (">", ">=") and bound == math.inf and value == math.inf:
        return True
    return judge(value, ">=" if op in (">", ">=") else "<=", bound) == "pass"


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
    about: str = "subject"  # "reference": the row audits the external reference itself, not the subject
    config: str = "main"  # the id of the card's config the row was measured under
    choice: str = ""  # the open choices the subject made, as the row judged them ("name=option; ...")

    @property
    def config_id(self) -> str:
        """The row's config id, with "main" (a row written before configs existed, or by hand) read as
        its card's main config."""
        return main_config(self.variant) if self.config == "main" else self.config

    @property
    def place(self) -> str:
        """The model, tagged ``@config`` when the row is not under its card's main config."""
        return self.model if self.config_id == main_config(self.variant) else f"{self.model}@{self.config}"

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["value"], float) and not math.isfinite(d["value"]):
            d["value"] = str(d["value"])
        return d

    @property
    def margin(self) -> float | None:
        """How much of its tolerance a judged row uses: value/tolerance for "<=" rows, tolerance/value
        for lower bounds, 0 or inf for exact ones; > 1 fails. None for rows that are not judged."""
        v, t = self.value, self.tolerance
        if self.status in ("n/a", "error") or t is None or not isinstance(v, (int, float)):
            return None
        if not math.isfinite(v):
            return math.inf
        if self.op == "<=":  # a negative value (an excess below its bound) uses none of the tolerance
            return max(v, 0.0) / t if t > 0 else (0.0 if v <= t else math.inf)
        if self.op in (">", ">="):
            if t == 0:
                return 0.0 if judge(v, self.op, t) == "pass" else math.inf
            return t / v if v > 0 and t > 0 else math.inf
        return 0.0 if v == t else math.inf


def main_config(variant: str) -> str:
    """The id of a card's main config ("main" for a name with no card)."""
    from .cards import CARDS
    card = CARDS.get(variant)
    return card.config_id if card is not None else "main"


def from_dict(d: dict) -> Row:
    """A Row from results.json (older files lack newer fields; non-finite values were strings)."""
    d = dict(d)
    if isinstance(d.get("value"), str):
        d["value"] = float(d["value"])
    return Row(**{k: v for k, v in d.items() if k in Row.__dataclass_fields__})
