"""HiRA (Hadamard high-rank adaptation) paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): A (r, d_in), B (d_out, r); W is the canonical (d_out, d_in)
base weight (a Conv1D layer's stored weight is Wᵀ: the formula always takes the canonical one).
"""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear
from .lora import A_draw_claims, zero_claim

EQUATION = "ΔW = W₀ ⊙ (B A),  W_eff = W₀ + W₀ ⊙ (B A) = W₀ ⊙ (1 + B A);  b unchanged;  B = 0 at init"
CITATION = (
    "Huang, Ko, Zhuang, Tang, Zhang, HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large Language "
    "Models, ICLR 2025 (OpenReview:TwJrTz9cRS), §4.3 eq. (6) ΔW = W₀ ⊙ (AB) with A (d × r), B (r × k) (the paper's A "
    "is the output-side factor: its AB is this B A), forward h = W₀x + (W₀ ⊙ (AB))x, init A = 0 and B kaiming (§4.3 "
    "text: here B = 0, A kaiming), merge W′ = W₀ + W₀ ⊙ (AB) (§4.4). No scale: eq. (6) has none, and the authors' "
    "code (hqsiswiliam/hira, hira/tuners/lora.py Linear.forward) computes F.linear(x, W ⊙ (1 + BA), b) and never "
    "applies its scale_ab field; init A kaiming_uniform(a=√5), B = 0 (its reset_lora_parameters defaults)"
)


def delta(W: torch.Tensor, state: dict) -> torch.Tensor:
    """ΔW = W₀ ⊙ (B A) (d_out, d_in)."""
    W, A, B = f64(W), f64(state["A"]), f64(state["B"])
    if B.shape[0] != W.shape[0] or A.shape[1] != W.shape[1]:
        raise ValueError(f"B A is {B.shape[0]} × {A.shape[1]} but W is {tuple(W.shape)} (canonical (d_out, d_in))")
    return W * (B @ A)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W₀ + W₀ ⊙ (B A), b_eff = b (HiRA §4.3 eq. (6), §4.4)."""
    return f64(W) + delta(W, state), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md): A (r, d_in), B (d_out, r)."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r)}


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """B = 0 exactly (ΔW = W₀ ⊙ BA = 0: the base model at init) and A drawn as stated: the authors' code and peft
    (init_weights=True) kaiming_uniform(a=√5) = U(±1/√d_in); peft's init_weights='gaussian' N(0, 1/r²)
    (cfg init_A, an open choice: B = 0 makes ΔW = 0 whatever A is)."""
    return [zero_claim("B", state["B"], "HiRA §4.3 (its A, the output-side factor, = 0; authors' code: init_b='zero')"),
            *A_draw_claims(state["A"], cfg, cite="HiRA authors' code (init_a='kaiming')")]
