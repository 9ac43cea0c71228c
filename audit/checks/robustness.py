"""robustness: each invalid config or situation raises the declared error type, naming the problem.

Judged: the exception type (or a subclass) and that the message names the offending field or value;
the wording is the implementation's own.

Generic cases for every variant (an unknown field, no target matched, attaching twice; r = 0 and a
wrong type for r where the method has a rank) plus the card's own ``bad_inputs``.
"""
from __future__ import annotations

import re

from ..cards import BadInput
from ..cell import Cell, NotApplicable
from ..subjects import NotSupported

DTYPE_INDEPENDENT = True  # a bad config is refused before any tensor is made, whatever the dtype

GENERIC = (
    BadInput({"bogus_field": 1}, TypeError),
    BadInput({"target_names": (r"^no_such_module$",)}, ValueError),
)
RANKED = (  # for methods with a rank (the card's config sets r); IA3 or RoAd have none to refuse
    BadInput({"r": 0}, ValueError),
    BadInput({"r": "4"}, TypeError),
)


def _words(text: str) -> str:
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text.lower().replace("_", " "))  # keep 0.5, split a.b
    return " " + re.sub(r"[^a-z0-9.]+", " ", text) + " "


def names_problem(message: str, fields: dict) -> bool:
    """Does the message name an offending field or its value? Judged on words, not wording:
    "calibration_data", "calibration data" and "calibration-data" all name the field."""
    said = _words(message)
    for name, value in fields.items():
        candidates = [name, *(value if isinstance(value, (tuple, list)) else [value])]
        for c in candidates:
            if c is None or isinstance(c, bool) or (isinstance(c, (list, tuple)) and not c):
                continue
            w = _words(str(c)).strip()
            if w and f" {w} " in said:
                return True
    return False


def _attempt(cell: Cell, bad: BadInput) -> tuple[float | None, str]:
    """(1 refused as declared, 0 not; None: the subject has no such option, with the reason)."""
    lacks = {f: why for f, why in cell.subject.unsupported.items() if f in bad.fields}
    if lacks:
        return None, "; ".join(f"{cell.subject.describe()} has no {f!r} option: {why}" for f, why in lacks.items())
    try:
        fields = {**cell.config(), **bad.fields}
        if bad.fields.get("target_names"):
            fields.pop("target_roles", None)
        cal = fields.pop("calibration_data", cell.calibration() if cell.needs_calibration() else None)
        with cell.lent_base(purpose="refusals") as model:  # a refusal leaves it as it was: the next reuses it
            cell.attach_subject(model, fields, cal)
    except Exception as e:  # noqa: BLE001 - judged below: the declared type, else the wrong type is the finding
        if isinstance(e, NotSupported) and not isinstance(e, bad.error):
            # the subject says it has no such option or situation: not a failure to refuse
            return None, f"{cell.subject.describe()} does not support this: {str(e)[:140]}"
        if not isinstance(e, bad.error):
            return 0.0, f"raised {type(e).__name__} instead of {bad.error.__name__}: {str(e)[:140]}"
        if names_problem(str(e), bad.fields):
            return 1.0, f"{type(e).__name__}: {str(e)[:140]}"
        return 0.0, f"raised {type(e).__name__} but the message names neither {sorted(bad.fields)} nor the value: {str(e)[:140]}"
    return 0.0, f"accepted; expected {bad.error.__name__}"


def run(cell: Cell) -> None:
    if not cell.subject.validates_config:
        raise NotApplicable(f"{cell.subject.describe()} gets its configs through the audit's translation of the "
                            "canonical fields into its own config classes, so a refusal (or its absence) would "
                            "be the translation's, not the subject's")
    ranked = RANKED if "r" in cell.card.config else ()
    for bad in ranked + GENERIC + cell.card.bad_inputs:
        label = ",".join(f"{k}={v!r}" for k, v in bad.fields.items()).replace("|", "/")
        ok, msg = _attempt(cell, bad)
        if ok is None:
            cell.row(f"raises[{label}]", None, None, status="n/a", message=msg)
        else:
            cell.row(f"raises[{label}]", ok, 1.0, op="==", message=msg)
    adapted = cell.adapted()
    try:
        cell.attach_subject(adapted.model, adapted.cfg, cell.calibration())
        ok, msg = 0.0, "attaching twice was accepted"
    except (RuntimeError, ValueError) as e:  # either is a clear refusal; silently stacking is the bug
        ok, msg = 1.0, f"{type(e).__name__}: {str(e)[:140]}"
    cell.row("raises[attach twice]", ok, 1.0, op="==", message=msg)
