"""DeLoRA paper formula (float64)."""

from __future__ import annotations

import torch

from ._common import f64, linear

EQUATION = "W′ = W + (λ/r)·[BΞA − DΞ_CD C]·diag(‖W_{:,j}‖),  Ξ = diag(1/(‖b_i‖‖a_i‖))"
CITATION = (
    "Bini, Girrbach, Akata, DeLoRA (ICLR'25), arXiv:2503.18225, §3 (eq. numbers unverified); ‖W‖ taken as the "
    "per-input-column norm as in the official code and peft; 1e-4 norm clamp from peft's delora/layer.py"
)

EPS = 1e-4  # peft clamps ‖a_i‖ and ‖b_i‖ to at least 1e-4


def normalized_term(B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """B Ξ A with Ξ = diag(1/(max(‖b_i‖,1e-4)·max(‖a_i‖,1e-4))), b_i = B[:, i], a_i = A[i, :]."""
    B, A = f64(B), f64(A)
    bn = torch.clamp(torch.linalg.vector_norm(B, dim=0), min=EPS)
    an = torch.clamp(torch.linalg.vector_norm(A, dim=1), min=EPS)
    return (B / (bn * an).unsqueeze(0)) @ A


def delta(state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = (λ/r)[BΞA − DΞ_CD C] diag(w_norm); the C/D term only when cfg["init_style"] == "paper"."""
    r = int(cfg["r"])
    lam = f64(state["lam"]).reshape(())
    term = normalized_term(state["B"], state["A"])
    if cfg.get("init_style") == "paper":
        term = term - normalized_term(state["D"], state["C"])
    return (lam / r) * term * f64(state["w_norm"]).reshape(1, -1)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + (λ/r)[BΞA − DΞ_CD C] diag(w), b_eff = b (arXiv:2503.18225 §3, eq. number unverified).

    state: A (r, d_in), B (d_out, r), lam (1,), w_norm (d_in); "paper" init adds frozen C (r, d_in),
    D (d_out, r), subtracted with the same λ. Conventions: w_norm is the per-input-column norm of
    the frozen W (not a scalar ‖W‖_F); both norms are clamped at 1e-4 as peft does (the official
    code does not clamp; this only matters when a norm is below 1e-4), also in the frozen term.
    """
    return f64(W) + delta(state, cfg), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def norm_bound_excess(state: dict, cfg: dict) -> float:
    """‖(λ/r)·BΞA‖_F − |λ| on the trainable term (no diag(w), no frozen term); ≤ 0 when the bound holds.

    Each rank-1 term has Frobenius norm ≤ |λ|/r (= with no clamp active), so the sum is ≤ |λ|
    (arXiv:2503.18225 §3).
    """
    lam = f64(state["lam"]).reshape(())
    term = (lam / int(cfg["r"])) * normalized_term(state["B"], state["A"])
    return float(torch.linalg.matrix_norm(term) - lam.abs())


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in), B (d_out, r), lam (1), w_norm (d_in); init_style "paper" adds C (r, d_in), D (d_out, r)."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r), "lam": (1,), "w_norm": (d_in,),
            **({"C": (r, d_in), "D": (d_out, r)} if cfg.get("init_style") == "paper" else {})}
