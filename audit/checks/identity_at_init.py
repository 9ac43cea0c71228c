"""identity_at_init: layer outputs and logits at init vs the untouched base model.

Tolerance by the card's identity claim: "exact" → 0; "numeric" → dtype-aware (fp32 1e-6,
bf16 4·2⁻⁸); "offset" (a deliberate non-identity init) → the card's declared bound, plus a
numeric check with the card's ``offset_tensors`` zeroed.
"""
from __future__ import annotations

import torch

import variants

from ..cell import Cell, rel_err
from ..state import capture

NUMERIC = {"float32": 1e-6, "bfloat16": 4 * 2.0 ** -8, "float16": 4 * 2.0 ** -11}


def _errors(cell: Cell, zero: tuple[str, ...] = ()) -> tuple[float, float, str]:
    base = cell.fresh_model()
    model = cell.adapted()
    names = list(variants.state_of(model).targets)
    if zero:
        with torch.no_grad():
            for tensors in variants.adapter_parameters(model).items():
                if tensors[0].rsplit(".", 1)[-1].removeprefix("adapter_") in zero:
                    tensors[1].zero_()
    with torch.no_grad():
        b = capture(base, names, lambda: cell.logits(base))
        a = capture(model, names, lambda: cell.logits(model))
        y0, y1 = cell.logits(base), cell.logits(model)
    worst = max(names, key=lambda n: rel_err(a[n][1], b[n][1]))
    return rel_err(y1, y0), rel_err(a[worst][1], b[worst][1]), worst


def run(cell: Cell) -> None:
    card = cell.card
    logit_err, layer_err, worst = _errors(cell)
    if card.identity == "exact":
        tol = cell.tol("identity_at_init", {"*": 0.0})
    elif card.identity == "numeric":
        tol = cell.tol("identity_at_init", NUMERIC)
    else:  # "offset": strict unless the card declares the offset as a tolerance deviation
        tol = cell.tol("identity_at_init", {"*": 0.0})
    claim = f"claim: {card.identity}"
    cell.row("logits_rel_err", logit_err, tol, message=claim, reference="base model")
    cell.row("layer_max_rel_err", layer_err, tol, message=f"{claim}; worst layer {worst}", reference="base model")
    if card.identity == "offset":
        offset = card.offset_tensors
        zl, zlay, _ = _errors(cell, zero=offset)
        ztol = NUMERIC[cell.dtype_name]
        cell.row("logits_rel_err_offset_zeroed", zl, ztol,
                 message=f"with {', '.join(offset)} set to 0 the init must be the identity numerically")
