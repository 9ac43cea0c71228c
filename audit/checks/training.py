"""training: the loss falls over a few steps on a small deterministic task; nothing non-finite.

Task: from a fixed batch of token ids, predict a fixed random token sequence (cross-entropy),
Adam, fixed seed. The card may loosen the required loss ratio (e.g. IA3's few parameters).
"""
from __future__ import annotations

import math

import torch

from ..cell import Cell

STEPS, LR = 12, 3e-2


def run(cell: Cell) -> None:
    model = cell.adapted()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR)
    ids = cell.inputs
    g = torch.Generator().manual_seed(cell.seed + 3)
    logits0 = cell.logits(model)
    labels = torch.randint(0, logits0.shape[-1], ids.shape, generator=g).to(ids.device)
    losses, nonfinite = [], 0
    model.train()
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        y = cell.logits(model).float()
        loss = torch.nn.functional.cross_entropy(y.reshape(-1, y.shape[-1]), labels.reshape(-1))
        loss.backward()
        if not math.isfinite(loss.item()) or any(not torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            nonfinite += 1
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        y = cell.logits(model).float()
        final = torch.nn.functional.cross_entropy(y.reshape(-1, y.shape[-1]), labels.reshape(-1)).item()
    nonfinite += 0 if math.isfinite(final) else 1
    ratio = final / losses[0]
    tol = cell.tol("training", {"*": 0.95})
    cell.row("loss_ratio", ratio, tol, message=f"loss {losses[0]:.4g} -> {final:.4g} after {STEPS} Adam steps (lr {LR})")
    cell.row("nonfinite_steps", nonfinite, 0.0, op="==")
