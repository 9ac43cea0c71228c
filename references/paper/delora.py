"""DeLoRA paper formula (float64)."""

from __future__ import annotations

import math

import torch

from . import lora
from ._common import InitClaim, f64, linear, rel_max, uniform_pit

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


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

B_MIN_REL = 1e-3  # "lower" bound on min_i ‖b_i‖ / E‖b_i‖ under the stated draw (paper init: B ≠ 0)


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """DeLoRA init (arXiv:2503.18225 §3): λ = λ₀, w_norm = ‖W[:, j]‖ per INPUT column of the frozen W, and

    * init_style "paper": A and B both Kaiming-initialised (stated as torch's kaiming_uniform(a=√5):
      A (r, d_in) ~ U(±1/√d_in), B (d_out, r) ~ U(±1/√r), fan_in = r), B ≠ 0, and the frozen copies
      C = A₀, D = B₀ exactly, so ΔW = 0 while A and B both get gradients;
    * init_style "peft" (peft 0.21.2 delora/layer.py, init_weights=True): B = 0, A ~ U(±1/√d_in).
    The paper and peft agree on A's draw; they differ on B (Kaiming + frozen copy vs zero).
    λ is compared with λ₀ rounded to λ's dtype (λ₀ = 0.1 is not a float32 number).
    """
    A, B, lam = state["A"], state["B"], state["lam"].detach()
    r, d_in = A.shape
    lam0 = torch.tensor(float(cfg["lambda0"]), dtype=lam.dtype)
    w = state["w_norm"].detach().to(torch.float64).reshape(-1)
    ref = torch.linalg.vector_norm(W.detach().to(torch.float64), dim=0)
    claims = [
        InitClaim("lam_minus_lambda0", "exact", "§3: λ = λ₀ (cfg lambda0)",
                  value=float((lam.to(torch.float64) - lam0.to(torch.float64)).abs().max())),
        InitClaim("w_norm_col", "deterministic", "§3: w_norm = ‖W[:, j]‖ per input column (dim=0 of (d_out, d_in))",
                  value=rel_max(w, ref) if w.shape == ref.shape else math.inf),
        *lora.A_draw_claims(A, {}, "DeLoRA §3 (kaiming_uniform(a=√5); paper and peft agree)"),
    ]
    if cfg.get("init_style") != "paper":
        return claims + [lora.zero_claim("B", B, "peft delora init_weights=True")]
    Bd = B.detach().to(torch.float64)
    bn = torch.linalg.vector_norm(Bd, dim=0).min() / math.sqrt(B.shape[0] / (3.0 * r))
    return claims + [
        InitClaim("B_kaiming_uniform", "distribution", f"§3: B ~ U(±1/√r) = U(±{1 / math.sqrt(r):.4g}) "
                  "(kaiming_uniform(a=√5), fan_in r)", pit=uniform_pit(B, 1.0 / math.sqrt(r))),
        InitClaim("B_min_col_norm_rel", "lower", "§3: B ≠ 0: min_i ‖b_i‖ / E‖b_i‖ (E‖b_i‖ = √(d_out/3r))",
                  value=float(bn), bound=B_MIN_REL),
        InitClaim("C_equals_A_max_abs", "exact", "§3: frozen C = A₀ exactly",
                  value=float((state["C"].detach().to(torch.float64) - A.detach().to(torch.float64)).abs().max())),
        InitClaim("D_equals_B_max_abs", "exact", "§3: frozen D = B₀ exactly",
                  value=float((state["D"].detach().to(torch.float64) - Bd).abs().max())),
    ]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """w_norm = ‖W[:, j]‖ per input column in compute_dtype() (§3)."""
    return {"w_norm": torch.linalg.vector_norm(f64(W), dim=0)}
