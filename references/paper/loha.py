"""LoHa (low-rank Hadamard product) paper formula (float64)."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear, lowrank_scaling
from .lora import draw_claims

EQUATION = "ΔW = γ·(B₁A₁) ⊙ (B₂A₂),  γ = α/r;  W′ = W + ΔW  (rank ΔW ≤ r²)"
CITATION = (
    "Hyeon-Woo, Ye-Bin, Oh, FedPara, arXiv:2108.06098, §3 (W = (X₁Y₁ᵀ) ⊙ (X₂Y₂ᵀ), rank ≤ r₁r₂, Proposition 1; "
    "eq. numbers unverified); as an additive adapter with γ = α/r: LyCORIS, Yeh et al., arXiv:2309.14859, §3 "
    "(section wording unverified). Canonical names follow peft: w1_a = B₁ (d_out, r), w1_b = A₁ (r, d_in), "
    "w2_a = B₂, w2_b = A₂"
)


def scaling(cfg: dict) -> float:
    """γ = alpha / r (LyCORIS arXiv:2309.14859 §3); use_rslora is not part of LoHa."""
    return lowrank_scaling(cfg, allow_rslora=False)


def delta(state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = γ·(w1_a w1_b) ⊙ (w2_a w2_b), (d_out, d_in)."""
    p = f64(state["w1_a"]) @ f64(state["w1_b"])
    q = f64(state["w2_a"]) @ f64(state["w2_b"])
    return scaling(cfg) * (p * q)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + γ·(w1_a w1_b) ⊙ (w2_a w2_b), b_eff = b (arXiv:2108.06098 §3; arXiv:2309.14859 §3).

    state: w1_a (d_out, r), w1_b (r, d_in), w2_a (d_out, r), w2_b (r, d_in). cfg: r, alpha.
    """
    return f64(W) + delta(state, cfg), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: w1_a (d_out, r), w1_b (r, d_in), w2_a (d_out, r), w2_b (r, d_in)."""
    r = int(cfg["r"])
    return {"w1_a": (d_out, r), "w1_b": (r, d_in), "w2_a": (d_out, r), "w2_b": (r, d_in)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

# FedPara (§3) trains W = (X₁Y₁ᵀ) ⊙ (X₂Y₂ᵀ) from scratch with "He initialization"; as an adapter one factor
# must be zero so that ΔW = 0. Which one, and how the others are drawn, the papers leave open: two statement
# parameters (open choices, audit/cards/loha.py) select them. cfg["zero_factor"]: the factor that is exactly
# 0 (peft: w2_b; LyCORIS's own code: w2_a; any of the four makes ΔW = 0). cfg["factor_draw"]: the family
# of the other three, "kaiming_uniform" (peft, loha/layer.py reset_adapter_parameters: U(±1/√fan_in),
# fan_in the tensor's second dimension) or "gaussian" with σ free per tensor (LyCORIS: w1_a ~ N(0, 0.1²),
# w1_b, w2_b ~ N(0, 1)).
FACTORS = ("w1_a", "w1_b", "w2_a", "w2_b")


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """The chosen factor exactly zero (so ΔW = 0: identity at init), the other three drawn from the
    chosen family (FedPara §3: He init; see the statement parameters above)."""
    zero, family = cfg.get("zero_factor", "w2_b"), cfg.get("factor_draw", "kaiming_uniform")
    if zero not in FACTORS:
        raise ValueError(f"zero_factor must be one of {FACTORS}, got {zero!r}")
    claims = [InitClaim("zero_factor_max_abs", "exact", f"identity at init: {zero} = 0 exactly (so ΔW = 0)",
                        value=float(state[zero].detach().abs().max()))]
    return claims + [c for n in FACTORS if n != zero
                     for c in draw_claims(f"{n}_draw", state[n], family, "FedPara §3 (He init) as LoHa", n)]
