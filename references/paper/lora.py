"""LoRA / rsLoRA paper formula (float64)."""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, f64, linear, lowrank_scaling, normal_pit, uniform_pit

EQUATION = "h = W₀x + ΔWx = W₀x + s·BAx,  s = α/r  (rsLoRA: s = α/√r)"
CITATION = (
    "Hu et al., LoRA, arXiv:2106.09685, §4.1, eq. (3) (eq. number unverified; the α/r scaling is in the §4.1 text); "
    "rsLoRA: Kalajdzievski, arXiv:2312.03732, §3 (γ_r = α/√r; theorem/eq. number unverified)"
)


def scaling(cfg: dict) -> float:
    """s = alpha/r, or alpha/√r when ``cfg["use_rslora"]`` (arXiv:2106.09685 §4.1; arXiv:2312.03732 §3)."""
    return lowrank_scaling(cfg, allow_rslora=True)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + s·B A, b_eff = b (arXiv:2106.09685 §4.1 eq. (3), unverified number); with peft's
    lora_bias (no paper: a bias b_B on B, scaled with the product) b_eff = b + s·b_B.

    state: A (r, d_in), B (d_out, r), b_B (d_out,) under lora_bias. cfg: r, alpha, use_rslora.
    """
    s = scaling(cfg)
    W_eff = f64(W) + s * (f64(state["B"]) @ f64(state["A"]))
    if "b_B" not in state:
        return W_eff, f64(b)
    base = f64(b) if b is not None else torch.zeros(W_eff.shape[0], dtype=torch.float64, device=W_eff.device)
    return W_eff, base + s * f64(state["b_B"])


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in), B (d_out, r)."""
    r = int(cfg["r"])
    out = {"A": (r, d_in), "B": (d_out, r)}
    return {**out, "b_B": (d_out,)} if cfg.get("lora_bias") else out


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

# Statement parameter: cfg["init_A"] picks the family A is stated to be drawn from, an open choice
# (audit/cards/lora.py): the paper (arXiv:2106.09685 §4.1) says "random Gaussian initialization for A and
# zero for B" without a variance, so "gaussian" states A ~ N(0, σ²) with σ free (estimated from each
# layer's own draws); peft (init_lora_weights=True) draws kaiming_uniform(a=√5) = U(±1/√d_in), stated
# exactly as "kaiming_uniform" (the default here, for callers that name no family).
A_INIT = "kaiming_uniform"
A_FAMILIES = ("gaussian", "kaiming_uniform")


def zero_claim(name: str, t: torch.Tensor, what: str) -> InitClaim:
    """Exact claim ``t = 0``: value max|t|."""
    return InitClaim(f"{name}_max_abs", "exact", f"{what}: {name} = 0 exactly", value=float(t.detach().abs().max()))


def draw_claims(metric: str, t: torch.Tensor, family: str, cite: str, what: str) -> list[InitClaim]:
    """Claims on the draws of ``t`` (rows, fan_in) from ``family``. "gaussian": N(0, σ²) with σ the
    draws' own root mean square (σ free): a KS test of the shape (conservative with σ fitted) and the
    excess kurtosis of the standardised draws (0 for a Gaussian, −1.2 for a uniform), which a KS test
    with σ fitted barely sees at a few thousand draws. "kaiming_uniform": U(±1/√fan_in),
    kaiming_uniform(a=√5), exactly (one KS test)."""
    if family == "gaussian":
        x = t.detach().to(torch.float64)
        sigma = float(x.pow(2).mean().sqrt()) or 1.0
        return [InitClaim(metric, "distribution", f"{cite}: {what} ~ N(0, σ²), σ free (here {sigma:.4g})",
                          pit=normal_pit(t, 0.0, sigma)),
                InitClaim(f"{metric}_kurtosis", "kurtosis", f"{cite}: {what} Gaussian-shaped (excess kurtosis 0)",
                          pit=(x / sigma).flatten())]
    if family != "kaiming_uniform":
        raise ValueError(f"the draw family must be one of {A_FAMILIES}, got {family!r}")
    bound = 1.0 / math.sqrt(t.shape[1])
    return [InitClaim(metric, "distribution", f"{cite}: {what} ~ U(±1/√fan_in) = U(±{bound:.4g}) "
                      "(kaiming_uniform, a = √5)", pit=uniform_pit(t, bound))]


def A_draw_claims(A: torch.Tensor, cfg: dict, cite: str = "LoRA arXiv:2106.09685 §4.1") -> list[InitClaim]:
    """Claims on the draws of A (r, d_in) from the family ``cfg["init_A"]`` (see A_FAMILIES)."""
    return draw_claims("A_draw", A, cfg.get("init_A", A_INIT), cite, "A")


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """B = 0 exactly (so ΔW = BA = 0 at init) and A drawn as stated (arXiv:2106.09685 §4.1); under
    lora_bias also b_B = 0 (else the layer would not start as the base)."""
    bias = [zero_claim("b_B", state["b_B"], "peft lora_bias: the identity at init")] if "b_B" in state else []
    return [zero_claim("B", state["B"], "LoRA §4.1"), *A_draw_claims(state["A"], cfg), *bias]
