"""grad_flow: the gradient of EVERY adapter tensor at step 0, and after one optimizer step.

Loss ‖logits − t‖² with a fixed random t (not rotation-invariant). Per tensor name, over all
adapted layers: the smallest gradient norm and the share of exactly-zero entries. A zero is a
failure unless the card claims it (with a reason); a claimed zero must be observed, and must be
non-zero after one Adam step unless the card says it stays zero. No base parameter may get a
gradient, and the trainable count must equal the card's formula.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from .. import choices
from ..cell import Cell
from .init import init_choice

LR = 1e-2


def _grads(cell: Cell, adapted) -> dict[str, list[torch.Tensor]]:
    """{canonical tensor name: [its gradient on each adapted layer]} of ‖logits − t‖²."""
    adapted.model.zero_grad(set_to_none=True)
    y = cell.logits(adapted).float()
    ((y - cell.target(y)) ** 2).mean().backward()
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    for grads in adapted.grads().values():
        for k, g in grads.items():
            out[k].append(g.double())
    return out


def _dead(gs: list[torch.Tensor]) -> float:
    return float(sum(int((g == 0).sum()) for g in gs) / max(1, sum(g.numel() for g in gs)))


def run(cell: Cell) -> None:
    with cell.shared() as adapted:
        _run(cell, adapted)


def _run(cell: Cell, adapted) -> None:
    card = cell.card
    model = adapted.model
    grads = _grads(cell, adapted)
    # which tensors are dead at step 0 follows from the init, so from the init options the subject took,
    # and from which tensors it has (LoKr's factors follow its factorisation: "tensors")
    zero_grads = card.zero_grads_at({**adapted.cfg, **choices.fields(init_choice(cell)),
                                     "tensors": sorted({k for n in adapted.names for k in adapted.slots[n]})})
    for tname, gs in sorted(grads.items()):
        claim = zero_grads.get(tname)
        gmin = min(float(g.norm()) for g in gs)
        dead = _dead(gs)
        if claim is None:
            cell.row(f"grad_norm_min[{tname}]", gmin, 0.0, op=">",
                     message="smallest gradient norm over adapted layers; must be non-zero")
            cell.row(f"dead_fraction[{tname}]", dead, 0.0,
                     message="share of entries with an exactly-zero gradient")
        else:
            cell.row(f"dead_fraction[{tname}]", dead, claim.fraction, op="==",
                     message=f"claimed zero at step 0: {claim.reason}")
    unknown = sorted(set(zero_grads) - set(grads))
    for tname in unknown:
        cell.row(f"claimed_tensor_exists[{tname}]", 0.0, 1.0, op="==",
                 message="the card claims a zero gradient for a tensor the implementation does not have")

    mapped = adapted.adapter_tensor_ids()
    base_with_grad = sum(1 for p in model.parameters() if id(p) not in mapped and p.grad is not None)
    cell.row("base_params_with_grad", base_with_grad, 0.0, op="==", message="base parameters must stay frozen")
    trainable_non_adapter = sum(1 for p in model.parameters() if id(p) not in mapped and p.requires_grad)
    cell.row("trainable_non_adapter", trainable_non_adapter, 0.0, op="==",
             message="trainable tensors outside the adapter's canonical state")
    if card.trainable_per_layer is not None:
        cfg = adapted.cfg
        expect = sum(card.trainable_per_layer(*adapted.dims(n), {
            **cfg, "r_layer": adapted.rank(n), "shapes": {k: tuple(v.shape) for k, v in adapted.tensors(n).items()}})
            for n in adapted.names)
        have = sum(p.numel() for p in adapted.parameters())
        cell.row("trainable_params", have, float(expect), op="==", message="card formula summed over adapted layers")

    if zero_grads:
        opt = torch.optim.Adam(adapted.parameters(), lr=LR)
        opt.step()
        after = _grads(cell, adapted)
        for tname, claim in sorted(zero_grads.items()):
            if tname not in after:
                continue
            dead = _dead(after[tname])
            if claim.stays_zero:
                cell.row(f"dead_fraction_after_step[{tname}]", dead, claim.fraction, op="==",
                         message="claimed to stay zero (stationary point)")
            else:
                expect_live = 1.0 - claim.fraction
                cell.row(f"dead_fraction_after_step[{tname}]", dead, 0.0, op="<=",
                         message=f"claimed zero only at step 0; after one Adam step (lr {LR}) the "
                                 f"{claim.fraction:.0%} dead share must come alive ({expect_live:.0%} already was)")
