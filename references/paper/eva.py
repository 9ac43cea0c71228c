"""EVA (Explained Variance Adaptation) paper formula (float64): a LoRA forward with data-driven A."""

from __future__ import annotations

import torch

from ._common import f64, linear

EQUATION = "W′ = W + (α/r)·B_l A_l,  rows of A_l = top-r_l principal directions of the layer inputs"
CITATION = (
    "Paischer et al., EVA, arXiv:2410.07170, §3 (eq. number unverified); scaling per peft "
    "adjust_scaling_factors: α_l = α·r_l/r so s_l = α/r for every layer"
)


def scaling(cfg: dict) -> float:
    """s = alpha / r with the *config* r, even though A has r_l rows after rank redistribution."""
    r = int(cfg["r"])
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    return float(cfg["alpha"]) / r


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + (alpha/r)·B A, b_eff = b (arXiv:2410.07170 §3, eq. number unverified).

    state: A (r_l, d_in), B (d_out, r_l). Convention: s uses cfg["r"], not r_l (peft's
    adjust_scaling_factors keeps α_l/r_l = α/r; with rsLoRA it also gives α/r).
    """
    A, B = f64(state["A"]), f64(state["B"])
    if A.shape[0] != B.shape[1]:
        raise ValueError(f"A has {A.shape[0]} rows but B has {B.shape[1]} columns")
    return f64(W) + scaling(cfg) * (B @ A), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r_l, d_in), B (d_out, r_l); r_l is per layer (None: any)."""
    return {"A": (None, d_in), "B": (d_out, None)}
