"""LoHa (low-rank Hadamard product) paper formula (float64)."""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, f64, linear, lowrank_scaling, uniform_pit

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
# must be zero so that ΔW = 0. The statement audited is peft's (loha/layer.py reset_adapter_parameters,
# init_weights=True), the de-facto standard: w1_a, w1_b, w2_a ~ kaiming_uniform(a=√5) = U(±1/√fan_in) with
# fan_in the tensor's second dimension (r for w1_a, w2_a; d_in for w1_b), w2_b = 0. LyCORIS's own code zeroes
# w2_a instead, with Gaussian draws (w1_a ~ N(0, 0.1²), w1_b, w2_b ~ N(0, 1)): a different, equally valid
# identity init that this statement does not describe.

def _uniform_claim(name: str, t: torch.Tensor) -> InitClaim:
    fan_in = t.shape[1]
    bound = 1.0 / math.sqrt(fan_in)
    return InitClaim(f"{name}_kaiming_uniform", "distribution",
                     f"peft init: {name} ~ U(±1/√fan_in) = U(±{bound:.4g}), fan_in = {fan_in} (kaiming_uniform(a=√5); "
                     "FedPara §3: He init)", pit=uniform_pit(t, bound))


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """w2_b = 0 exactly (so ΔW = 0: identity at init) and w1_a, w1_b, w2_a drawn U(±1/√fan_in)."""
    return [
        InitClaim("w2_b_max_abs", "exact", "identity at init: w2_b = 0 exactly (ΔW = γ·P ⊙ (w2_a·0) = 0)",
                  value=float(state["w2_b"].detach().abs().max())),
        _uniform_claim("w1_a", state["w1_a"]),
        _uniform_claim("w1_b", state["w1_b"]),
        _uniform_claim("w2_a", state["w2_a"]),
    ]
