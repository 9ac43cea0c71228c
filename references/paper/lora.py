"""LoRA / rsLoRA paper formula (float64)."""

from __future__ import annotations

import torch

from ._common import f64, linear, lowrank_scaling

EQUATION = "h = W₀x + ΔWx = W₀x + s·BAx,  s = α/r  (rsLoRA: s = α/√r)"
CITATION = (
    "Hu et al., LoRA, arXiv:2106.09685, §4.1, eq. (3) (eq. number unverified; the α/r scaling is in the §4.1 text); "
    "rsLoRA: Kalajdzievski, arXiv:2312.03732, §3 (γ_r = α/√r; theorem/eq. number unverified)"
)


def scaling(cfg: dict) -> float:
    """s = alpha/r, or alpha/√r when ``cfg["use_rslora"]`` (arXiv:2106.09685 §4.1; arXiv:2312.03732 §3)."""
    return lowrank_scaling(cfg, allow_rslora=True)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + s·B A, b_eff = b (arXiv:2106.09685 §4.1 eq. (3), unverified number).

    state: A (r, d_in), B (d_out, r). cfg: r, alpha, use_rslora.
    """
    W_eff = f64(W) + scaling(cfg) * (f64(state["B"]) @ f64(state["A"]))
    return W_eff, f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in), B (d_out, r)."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r)}
