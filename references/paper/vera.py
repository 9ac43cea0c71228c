"""VeRA paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): the shared frozen pair as a whole, A (r, D_in) and
B (D_out, r) with D_in ≥ d_in, D_out ≥ d_out (the largest dims among the adapted layers; every layer holds
the same pair), and the layer's trainable vectors lambda_b (d_out) and lambda_d (r). The layer uses the
leading blocks A[:, :d_in] and B[:d_out, :] (peft's layout, how one pair serves layers of several sizes).
"""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, f64, linear

EQUATION = ("h = W₀x + Λ_b B Λ_d A x:  W_eff = W + diag(λ_b)·B_s·diag(λ_d)·A_s,  "
            "A_s = A[:, :d_in], B_s = B[:d_out, :]")
CITATION = (
    "Kopiczko, Blankevoort, Asano, VeRA: Vector-based Random Matrix Adaptation, arXiv:2310.11454 (ICLR 2024), "
    "§3.1 eq. (1) (A, B frozen, random, shared across layers; b = 0 and d = d_init at init; Kaiming init); "
    "the leading-block slicing of one max-size pair is peft's (tuners/vera/layer.py), the paper shares "
    "one pair per size (unverified)"
)


def blocks(state: dict, d_in: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_s, B_s) = (A[:, :d_in], B[:d_out, :]); a pair smaller than the layer is refused."""
    A, B = state["A"], state["B"]
    if A.shape[1] < d_in or B.shape[0] < d_out:
        raise ValueError(f"the shared pair A {tuple(A.shape)}, B {tuple(B.shape)} is smaller than the layer "
                         f"(d_in {d_in}, d_out {d_out})")
    return f64(A[:, :d_in]), f64(B[:d_out, :])


def delta(W: torch.Tensor, state: dict) -> torch.Tensor:
    """ΔW = diag(λ_b) B_s diag(λ_d) A_s (d_out, d_in), eq. (1)."""
    d_out, d_in = W.shape
    A_s, B_s = blocks(state, d_in, d_out)
    lam_b, lam_d = f64(state["lambda_b"]).reshape(-1), f64(state["lambda_d"]).reshape(-1)
    return (lam_b[:, None] * B_s) @ (lam_d[:, None] * A_s)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + diag(λ_b) B_s diag(λ_d) A_s, b_eff = b (arXiv:2310.11454 §3.1 eq. (1)).

    state: A (r, D_in), B (D_out, r) the shared pair; lambda_b (d_out), lambda_d (r). No scale.
    """
    return f64(W) + delta(W, state), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md): the shared
    pair A (r, D_in ≥ d_in), B (D_out ≥ d_out, r) (None: the model's largest dims), lambda_b (d_out), lambda_d (r)."""
    r = int(cfg["r"])
    return {"A": (r, None), "B": (None, r), "lambda_b": (d_out,), "lambda_d": (r,)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

KS_ALPHA = 1e-6  # false-alarm rate of one draw claim (as the audit's pooled distribution rows)
# rounding a draw to bf16 (a bf16 base with float32 adapters: peft rounds the pair through the base dtype)
# moves its PIT by at most u/2; u of bf16 covers every precision the audit runs
DRAW_ROUNDING = 2.0 ** -8


def ks_margin(x: torch.Tensor, bound: float) -> float:
    """critical(n) + rounding − KS statistic of the draws x against U(±bound); ≥ 0 when they fit.

    critical(n) = √(ln(2/α)/(2n)) (DKW) at α = KS_ALPHA over the n draws of the WHOLE shared matrix: every
    layer holds the same matrix, so the matrix itself is the pooled sample (pooling it per layer would
    count each draw once per layer and shrink the critical value without new evidence)."""
    pit = ((x.detach().to(torch.float64).flatten() / bound) + 1) / 2
    p, _ = torch.sort(pit.clamp(0, 1))
    n = p.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = float(torch.maximum(i / n - p, p - (i - 1) / n).max())
    return math.sqrt(math.log(2 / KS_ALPHA) / (2 * n)) + DRAW_ROUNDING - ks


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """VeRA init (arXiv:2310.11454 §3.1): λ_b = 0 exactly (so ΔW = 0: the base model at init), λ_d = d_initial
    (compared in λ_d's dtype: 0.1 is not a float32 number), and the shared pair Kaiming-uniform with gain √2
    and the fan-in of the full matrix (peft's _kaiming_init): A ~ U(±√(6/D_in)), B ~ U(±√(6/r)).
    The draw claims are "lower" rows: the KS margin of the whole matrix (see ks_margin), ≥ 0."""
    A, B = state["A"], state["B"]
    lam_b, lam_d = state["lambda_b"].detach(), state["lambda_d"].detach()
    d0 = torch.tensor(float(cfg.get("d_initial", 0.1)), dtype=lam_d.dtype).to(torch.float64)
    r, D_in = A.shape
    a_bound, b_bound = math.sqrt(6.0 / D_in), math.sqrt(6.0 / r)
    return [
        InitClaim("lambda_b_max_abs", "exact", "§3.1: λ_b = 0 exactly (ΔW = 0 at init)",
                  value=float(lam_b.abs().max())),
        InitClaim("lambda_d_minus_d_initial", "exact",
                  "§3.1: λ_d = d_initial (cfg d_initial, rounded to λ_d's dtype)",
                  value=float((lam_d.to(torch.float64) - d0).abs().max())),
        InitClaim("A_kaiming_uniform_ks_margin", "lower", f"§3.1: the shared A (r = {r}, D_in = {D_in}) ~ "
                  f"U(±√(6/D_in)) = U(±{a_bound:.4g}) (Kaiming, gain √2, fan-in of the full matrix); KS margin "
                  f"at α = {KS_ALPHA:g} over its {A.numel()} draws", value=ks_margin(A, a_bound), bound=0.0),
        InitClaim("B_kaiming_uniform_ks_margin", "lower", f"§3.1: the shared B (D_out = {B.shape[0]}, r = {r}) ~ "
                  f"U(±√(6/r)) = U(±{b_bound:.4g}) (fan-in r); KS margin at α = {KS_ALPHA:g} over its "
                  f"{B.numel()} draws", value=ks_margin(B, b_bound), bound=0.0),
    ]
