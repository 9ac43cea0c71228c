"""identity_at_init: layer outputs and logits at init vs the untouched base model.

Tolerance: dtype-aware (fp32 1e-6 ≈ 16u, bf16 4·2⁻⁸ = 4u) for both "exact" and "numeric" claims.
An exact claim (B = 0, l = 1, ...) is exact in exact arithmetic; a correct implementation may still
round: DoRA formed as m ⊙ V/‖V‖ the way the paper writes it is 1 ulp off in some entries, so
judging it with tolerance 0 calls correct code wrong. The row says whether the result was bit-exact.
A broken init (random B, a missing scale) is off by O(1). "offset" (a deliberate non-identity init)
→ the card's declared bound, plus a numeric check with the card's ``offset_tensors`` zeroed.
"""
from __future__ import annotations

import torch

import variants

from ..cell import Cell, rel_err
from ..state import capture, layer_states

NUMERIC = {"float32": 1e-6, "bfloat16": 4 * 2.0 ** -8, "float16": 4 * 2.0 ** -11}


def _errors(cell: Cell, zero: tuple[str, ...] = ()) -> tuple[float, float, str]:
    """(logits rel err, worst layer-output rel err, worst layer) of the adapted vs the base model,
    with the adapter tensors named in ``zero`` set to 0 first."""
    base = cell.fresh_model()
    model = cell.adapted()
    names = list(variants.state_of(model).targets)
    with torch.no_grad():
        for tensors in layer_states(model).values():
            for tname in zero:
                tensors[tname].zero_()
        b, y0 = capture(base, names, lambda: cell.logits(base))
        a, y1 = capture(model, names, lambda: cell.logits(model))
    worst = max(names, key=lambda n: rel_err(a[n][1], b[n][1]))
    return rel_err(y1, y0), rel_err(a[worst][1], b[worst][1]), worst


def run(cell: Cell) -> None:
    card = cell.card
    logit_err, layer_err, worst = _errors(cell)
    # "offset" is judged strictly too, unless the card declares the offset as a tolerance deviation
    tol = cell.tol("identity_at_init", NUMERIC if card.identity != "offset" else {"*": 0.0})
    claim = f"claim: {card.identity}" + (" (bit-exact)" if logit_err == layer_err == 0 else
                                         " (not bit-exact: judged up to rounding)" if card.identity == "exact" else "")
    cell.row("logits_rel_err", logit_err, tol, message=claim, reference="base model")
    cell.row("layer_max_rel_err", layer_err, tol, message=f"{claim}; worst layer {worst}", reference="base model")
    if card.identity == "offset":
        offset = card.offset_tensors
        zeroed_err, _, _ = _errors(cell, zero=offset)
        cell.row("logits_rel_err_offset_zeroed", zeroed_err, NUMERIC[cell.dtype_name],
                 message=f"with {', '.join(offset)} set to 0 the init must be the identity numerically")
