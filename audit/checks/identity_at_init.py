"""identity_at_init: layer outputs and logits at init vs the untouched base model.

"exact" and "numeric" claims alike are judged up to the rounding of the base weights: the tolerance
is SPREAD_FACTOR × how far the same outputs move when every adapted layer's weight is jittered by one
unit round-off of the run's dtype (audit/numerics.py), floored at u. An exact claim (B = 0, l = 1)
holds in exact arithmetic, but a correct implementation may still round (DoRA formed as m ⊙ V/‖V‖
the way the paper writes it is 1 ulp off in some entries; PiSSA's W_res + s·BA rounds by
construction), so a zero tolerance calls correct code wrong; each row says whether the result was
bit-exact. A broken init (random B, a missing scale) is off by O(1). "offset" (a deliberate
non-identity init) is judged strictly unless the card declares its bound as a tolerance deviation,
plus the same rounding-level check with the card's ``offset_tensors`` zeroed.
"""
from __future__ import annotations

import torch

from ..cell import Cell, rel_err
from ..numerics import describe, jitter, spread_tolerance
from ..state import capture, modules_named


def _outputs(cell: Cell, model, modules) -> tuple[dict, torch.Tensor]:
    with torch.no_grad():
        return capture(modules, lambda: cell.logits(model))


def _rounding_spread(cell: Cell, names, base_out) -> tuple[float, dict[str, float]]:
    """(logits, {layer: output}) rel errors of the base model with every adapted layer's weight
    jittered by one unit round-off, against the base model itself."""
    jittered = cell.fresh_model()
    mods = modules_named(jittered, names)
    gen = torch.Generator().manual_seed(cell.seed + 41)
    with torch.no_grad():
        for n in names:
            mods[n].weight.copy_(jitter(mods[n].weight, cell.dtype, gen))
    seen, y = _outputs(cell, jittered, mods)
    return rel_err(y, base_out[1]), {n: rel_err(seen[n][1], base_out[0][n][1]) for n in names}


def base_reference(cell: Cell, names) -> tuple:
    """(base outputs, their one-ulp rounding spread) for these adapted layers, computed once per base
    model and layer set (every card adapting the same layers shares them)."""
    cache = cell._base_cache.setdefault("identity", {})
    key = tuple(names)
    if key not in cache:
        base = cell.base()
        base_out = _outputs(cell, base, modules_named(base, names))
        cache[key] = (base_out, _rounding_spread(cell, names, base_out))
    return cache[key]


def _judge(cell: Cell, adapted, names, base_out, spread, metric_suffix: str = "", claim: str = "",
           tolerance: float | None = None) -> None:
    """Rows: logits and worst layer (by error/tolerance) of the adapted model vs the base outputs."""
    seen, y = _outputs(cell, adapted.model, adapted)
    logit_err = rel_err(y, base_out[1])
    layer = {n: (rel_err(seen[n][1], base_out[0][n][1]), tolerance or spread_tolerance([spread[1][n]], cell.dtype))
             for n in names}
    worst = max(names, key=lambda n: layer[n][0] / layer[n][1])
    exact = " (bit-exact)" if logit_err == 0 and all(e == 0 for e, _ in layer.values()) else ""
    how = "fixed bound" if tolerance is not None else describe([spread[0]], cell.dtype).replace(
        "reference spread", "spread of a one-ulp weight jitter")
    cell.row(f"logits_rel_err{metric_suffix}", logit_err, tolerance or spread_tolerance([spread[0]], cell.dtype),
             message=f"{claim}{exact}; {how}", reference="base model")
    if not metric_suffix:
        cell.row("layer_max_rel_err", layer[worst][0], layer[worst][1],
                 message=f"{claim}{exact}; worst layer {worst}", reference="base model")


def run(cell: Cell) -> None:
    with cell.shared() as adapted:
        _run(cell, adapted)


def _run(cell: Cell, adapted) -> None:
    card = cell.card
    names = adapted.names
    base_out, spread = base_reference(cell, names)
    claim = f"claim: {card.identity}"
    # "offset" is judged strictly, unless the card declares the offset as a tolerance deviation
    _judge(cell, adapted, names, base_out, spread, claim=claim, tolerance=0.0 if card.identity == "offset" else None)
    if card.identity == "offset":
        zeroed = cell.adapted()
        zeroed.set_state({n: {t: torch.zeros_like(v[t]) for t in card.offset_tensors}
                          for n, v in zeroed.state().items()})
        _judge(cell, zeroed, names, base_out, spread, "_offset_zeroed",
               f"with {', '.join(card.offset_tensors)} set to 0 the init must be the identity up to rounding")
