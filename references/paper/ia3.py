"""(IA)³ output scaling (k/v projections) paper formula (float64)."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear

EQUATION = "softmax(Q(l_k ⊙ Kᵀ)/√d_k)(l_v ⊙ V): as a layer hook, y = l ⊙ (Wx + b)"
CITATION = "Liu et al., T-Few / (IA)³, arXiv:2205.05638, §3.3 (eq. number unverified; in-text formulas)"


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = diag(l) W, b_eff = l ⊙ b (arXiv:2205.05638 §3.3, eq. number unverified).

    state: l (d_out) (peft's (d_out, 1) is accepted and flattened). The bias is scaled, since
    the paper rescales the activation K = Wx + b (peft's merge does the same).
    """
    l = f64(state["l"]).reshape(-1)
    return l.unsqueeze(1) * f64(W), None if b is None else l * f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: l (d_out)."""
    return {"l": (d_out,)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """(IA)³ init (arXiv:2205.05638 §3.3): l = 1 exactly (the rescaling starts as the identity)."""
    l = state["l"].detach().to(torch.float64)
    return [InitClaim("l_minus_one_max_abs", "exact", "§3.3: l = 1 exactly", value=float((l - 1).abs().max()))]
