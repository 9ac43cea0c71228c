"""PiSSA paper formula (float64). The layer weight W passed in is the mutated residual W_res."""

from __future__ import annotations

import torch

from ._common import f64, linear, lowrank_scaling

EQUATION = "W = W^res + s·BA,  s·BA = U_r S_r V_rᵀ (principal part),  W^res = U_[r:] S_[r:] V_[r:]ᵀ"
CITATION = (
    "Meng, Wang, Zhang, PiSSA, arXiv:2404.02948, §3 (eq. numbers unverified; the paper has no α/r factor, "
    "i.e. α = r; the paper's A/B naming may be swapped relative to peft's)"
)


def scaling(cfg: dict) -> float:
    """s = alpha/r (STATE_LAYOUT.md); ``use_rslora`` is refused (not part of the reference formula)."""
    return lowrank_scaling(cfg, allow_rslora=False)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W_res + s·B A, b_eff = b, with W = W_res (arXiv:2404.02948 §3, eq. number unverified).

    state: A (r, d_in), B (d_out, r). peft divides S_r by s before the square root so that
    s·B A = U_r S_r V_rᵀ; the merged weight is the same for any α.
    """
    return f64(W) + scaling(cfg) * (f64(state["B"]) @ f64(state["A"])), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def reconstruction_error(W_orig: torch.Tensor, W_res: torch.Tensor, state: dict, cfg: dict) -> float:
    """max|W_res + s·B A − W_orig| / max|W_orig| (PiSSA's W = W^res + AB, arXiv:2404.02948 §3)."""
    W_eff, _ = merged(W_res, None, state, cfg)
    W0 = f64(W_orig)
    return float((W_eff - W0).abs().max() / W0.abs().max())


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in), B (d_out, r); the layer weight is W_res."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r)}
