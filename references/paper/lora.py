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


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

# Statement parameter: cfg.get("init_A", A_INIT) picks the stated draw of A. The paper (arXiv:2106.09685
# §4.1) says "random Gaussian initialization for A and zero for B" without a variance; practitioners (peft
# init_lora_weights=True) draw kaiming_uniform(a=√5) = U(±1/√d_in): the audit's default statement.
# init_A="gaussian" states peft's init_lora_weights="gaussian", N(0, (1/r)²).
A_INIT = "kaiming_uniform"


def zero_claim(name: str, t: torch.Tensor, what: str) -> InitClaim:
    """Exact claim ``t = 0``: value max|t|."""
    return InitClaim(f"{name}_max_abs", "exact", f"{what}: {name} = 0 exactly", value=float(t.detach().abs().max()))


def A_draw_claim(A: torch.Tensor, cfg: dict, cite: str = "LoRA arXiv:2106.09685 §4.1",
                 note: str = "kaiming_uniform(a=√5), peft's init; the paper says random Gaussian") -> InitClaim:
    """Distribution claim on the draws of A (r, d_in): U(±1/√d_in) (default) or N(0, (1/r)²) (init_A="gaussian")."""
    r, d_in = A.shape
    kind = cfg.get("init_A", A_INIT)
    if kind == "gaussian":
        return InitClaim("A_gaussian", "distribution", f"{cite}: A ~ N(0, (1/r)²), r = {r} (peft "
                         "init_lora_weights='gaussian'; the paper: random Gaussian)", pit=normal_pit(A, 0.0, 1.0 / r))
    if kind != "kaiming_uniform":
        raise ValueError(f"init_A must be 'kaiming_uniform' or 'gaussian', got {kind!r}")
    bound = 1.0 / math.sqrt(d_in)
    return InitClaim("A_kaiming_uniform", "distribution", f"{cite}: A ~ U(±1/√d_in) = U(±{bound:.4g}) ({note})",
                     pit=uniform_pit(A, bound))


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """B = 0 exactly (so ΔW = BA = 0 at init) and A drawn as stated (arXiv:2106.09685 §4.1)."""
    return [zero_claim("B", state["B"], "LoRA §4.1"), A_draw_claim(state["A"], cfg)]
