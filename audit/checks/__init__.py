"""The checks: each module defines ``run(cell)`` that appends measurement rows to ``cell.rows``.

Order here is the order of the report. A check raises ``NotApplicable(reason)`` when it does not
apply; the runner turns that into an n/a row and any other exception into an error row.
"""
from __future__ import annotations

import importlib

CHECK_ORDER = ("identity_at_init", "init", "grad_flow", "paper_parity", "peft_parity", "lycoris_parity", "properties",
               "placement", "save_load", "merge", "training", "robustness", "timing")


def dtype_independent(name: str) -> bool:
    """Whether a check declares (``DTYPE_INDEPENDENT = True``) that its rows cannot depend on the
    dtype (which layers are adapted; which bad configs are refused): the runner measures it in the
    plan's first dtype only."""
    return bool(getattr(load(name), "DTYPE_INDEPENDENT", False))


def load(name: str):
    if name not in CHECK_ORDER:
        raise ValueError(f"unknown check {name!r}; checks: {', '.join(CHECK_ORDER)}")
    return importlib.import_module(f"{__name__}.{name}")
