"""robustness: each invalid config or situation raises the declared error, naming the problem.

Generic cases for every variant (r = 0, an unknown field, a wrong type, no target matched,
attaching twice) plus the card's own ``bad_inputs``.
"""
from __future__ import annotations

import re

import torch

import variants

from ..cards import BadInput
from ..cell import Cell

GENERIC = (
    BadInput({"r": 0}, ValueError, r"\br\b"),
    BadInput({"bogus_field": 1}, TypeError, "bogus_field"),
    BadInput({"r": "4"}, TypeError, r"\br\b"),
    BadInput({"target_names": (r"^no_such_module$",)}, ValueError, "no target matched"),
)


def _attempt(cell: Cell, bad: BadInput) -> tuple[float, str]:
    try:
        fields = {**cell.cfg().to_dict(), **bad.fields}
        if bad.fields.get("target_names"):
            fields.pop("target_roles", None)
        cal = fields.pop("calibration_data", cell.calibration() if cell.variant.needs_calibration else None)
        cfg = cell.variant.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        variants.attach(cell.fresh_model(), cfg, calibration_data=cal, variant=cell.variant)
    except bad.error as e:
        if re.search(bad.match, str(e)):
            return 1.0, f"{type(e).__name__}: {str(e)[:140]}"
        return 0.0, f"raised {type(e).__name__} but message lacks /{bad.match}/: {str(e)[:140]}"
    except Exception as e:  # noqa: BLE001 - the wrong exception type is the finding
        return 0.0, f"raised {type(e).__name__} instead of {bad.error.__name__}: {str(e)[:140]}"
    return 0.0, f"accepted; expected {bad.error.__name__}"


def run(cell: Cell) -> None:
    for bad in GENERIC + cell.card.bad_inputs:
        label = ",".join(f"{k}={v!r}" for k, v in bad.fields.items()).replace("|", "/")
        ok, msg = _attempt(cell, bad)
        cell.row(f"raises[{label}]", ok, 1.0, op="==", message=msg)
    model = cell.adapted()
    try:
        variants.attach(model, cell.cfg(), calibration_data=cell.calibration(), variant=cell.variant)
        ok, msg = 0.0, "attaching twice was accepted"
    except RuntimeError as e:
        ok, msg = 1.0, f"RuntimeError: {str(e)[:140]}"
    cell.row("raises[attach twice]", ok, 1.0, op="==", message=msg)
