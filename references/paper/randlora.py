"""RandLoRA paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): the shared frozen bases as a whole, A (r, 1, m*) and
B (M*, N, r) (the largest min / max dims among the adapted layers; every layer holds the same pair), and the
layer's trainable diagonals lambda (r, n) and gamma (n, m), m = min(d_in, d_out), n = ⌈m / r⌉.
"""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, f64, linear

EQUATION = ("W_eff = W + s·Σ_{j=1}^{n} B_j Λ_j A Γ_j (transposed when d_in > d_out),  n = ⌈min(d_in, d_out)/r⌉,  "
            "Λ_j = diag(λ[:, j]), Γ_j = diag(γ[j]),  B_j, A frozen random shared by all layers,  s = alpha/r "
            "(or 10·alpha/r, or 1: cfg scale)")
CITATION = (
    "Albert, Zhang, Saratchandran, Rodriguez-Opazo, van den Hengel, Abbasnejad, RandLoRA: Full-rank "
    "parameter-efficient fine-tuning of large models, arXiv:2502.00987 (ICLR 2025), §4 (the update as a sum of n "
    "low-rank random bases B_j A with trainable diagonals Λ_j, Γ_j, A shared across the bases, n·r ≥ the rank; "
    "section and equation numbers unverified: the full text was not reachable here); the scalar s (alpha/r in peft, "
    "10·alpha/r in the authors' code, none in the update as the paper writes it: an open choice), the "
    "smaller side taking Γ (ΔW built transposed when d_in > d_out) and the storage of B_j as B_flat[:, j::n] are "
    "peft's layout (tuners/randlora/layer.py get_scaled_bases)"
)

# defaults of peft's RandLoraConfig, used only when a cfg leaves them out
R_DEFAULT, ALPHA_DEFAULT = 32, 640.0


def num_bases(m: int, r: int) -> int:
    """n = ⌈m / r⌉: the fewest rank-r bases whose ranks add up to m (full rank)."""
    return -(-m // r)


def bases(state: dict, d_in: int, d_out: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(A_s (r, m), [B_1, ..., B_n] each (M, r)) for this layer, m/M = min/max(d_in, d_out); bases smaller than
    the layer are refused. B_j is the columns j, j+n, ..., j+(r−1)n of B[:M, :n].reshape(M, n·r) (peft's storage:
    its flattened B and its flattened Λ ⊙ A ⊙ Γ pair column k·n + j of the one with row k·n + j of the other)."""
    A, B = state["A"], state["B"]
    m, M = min(d_in, d_out), max(d_in, d_out)
    r = A.shape[0]
    n = num_bases(m, r)
    if A.shape[-1] < m or B.shape[0] < M or B.shape[1] < n or B.shape[2] != r:
        raise ValueError(f"the shared bases A {tuple(A.shape)}, B {tuple(B.shape)} do not serve a layer with "
                         f"(d_in, d_out) = ({d_in}, {d_out}) at rank {r} ({n} bases)")
    b_flat = f64(B[:M, :n, :]).reshape(M, n * r)
    return f64(A[:, 0, :m]), [b_flat[:, j::n] for j in range(n)]


# the scalar on ΔW (cfg "scale", an open choice of the card): the update as the paper writes it carries none; peft
# multiplies by alpha/r (LoRA's convention), the authors' code by 10·alpha/r; a constant is absorbed by Λ
SCALES = {"alpha_over_r": 1.0, "ten_alpha_over_r": 10.0, "none": None}


def scale(cfg: dict, r: int) -> float:
    """s: alpha/r (default), 10·alpha/r, or 1 ("none")."""
    k = SCALES[cfg.get("scale", "alpha_over_r")]
    return 1.0 if k is None else k * float(cfg.get("alpha", ALPHA_DEFAULT)) / int(cfg.get("r", r))


def delta(W: torch.Tensor, state: dict, cfg: dict) -> torch.Tensor:
    """ΔW (d_out, d_in) = s·Σ_j B_j diag(λ[:, j]) A diag(γ[j]), built M × m and transposed when d_in > d_out."""
    d_out, d_in = W.shape
    A_s, Bs = bases(state, d_in, d_out)
    lam, gam = f64(state["lambda"]), f64(state["gamma"])
    if lam.shape != (A_s.shape[0], len(Bs)) or gam.shape != (len(Bs), A_s.shape[1]):
        raise ValueError(f"lambda {tuple(lam.shape)} / gamma {tuple(gam.shape)} do not fit {len(Bs)} bases of rank "
                         f"{A_s.shape[0]} on {A_s.shape[1]} columns")
    s = scale(cfg, A_s.shape[0])
    d = sum((B_j * lam[:, j]) @ (A_s * gam[j]) for j, B_j in enumerate(Bs))
    return s * (d if d_in <= d_out else d.t())


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + s·Σ_j B_j Λ_j A Γ_j, b_eff = b (arXiv:2502.00987 §4)."""
    return f64(W) + delta(W, state, cfg), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md): the shared bases
    A (r, 1, m* ≥ m), B (M* ≥ M, N ≥ n, r) (None: the model's largest dims), lambda (r, n), gamma (n, m)."""
    r = int(cfg.get("r", R_DEFAULT))
    m = min(d_in, d_out)
    n = num_bases(m, r)
    return {"A": (r, 1, None), "B": (None, None, r), "lambda": (r, n), "gamma": (n, m)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

TERNARY_ALPHA = 1e-6  # false-alarm rate of the zero-share claim (Hoeffding), as the audit's pooled rows


def _zero_share_margin(t: torch.Tensor, p_zero: float) -> float:
    """Hoeffding bound √(ln(2/α)/(2N)) − |share of zeros − p_zero| over the N entries of the WHOLE shared tensor
    (every layer holds the same one: it is the sample, counted once)."""
    x = t.detach().to(torch.float64).flatten()
    return math.sqrt(math.log(2 / TERNARY_ALPHA) / (2 * x.numel())) - abs(float((x == 0).double().mean()) - p_zero)


def _ternary_spread(t: torch.Tensor) -> float:
    """(max − min)/max of the non-zero |entries|: 0 when the tensor takes values in {−c, 0, c} only."""
    nz = t.detach().to(torch.float64).flatten().abs()
    nz = nz[nz > 0]
    return float((nz.max() - nz.min()) / nz.max()) if nz.numel() else 1.0


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """RandLoRA init (arXiv:2502.00987 §4): ΔW = 0 at init, by one diagonal family at zero (``zero_side``: peft
    zeroes λ, the authors' code γ; either gives ΔW = 0) and the other non-zero (both zero is a stationary point);
    n·r ≥ m bases (full rank reachable). The bases' law is left open for dense bases (our U(−1,1), peft's kaiming
    draws, both over their std); ``sparse`` / ``very_sparse`` claim ternary {−c, 0, c} bases with P(0) = 2/3
    resp. 1 − 1/√m* (Bingham & Mannila; Li, Hastie & Church, cited by the paper for its sparse bases)."""
    lam, gam = state["lambda"].detach().to(torch.float64), state["gamma"].detach().to(torch.float64)
    zero_side = cfg.get("zero_side", "lambda")
    zero, other = (lam, gam) if zero_side == "lambda" else (gam, lam)
    other_name = "gamma" if zero_side == "lambda" else "lambda"
    d_out, d_in = W.shape
    m = min(d_in, d_out)
    claims = [
        InitClaim(f"{zero_side}_max_abs", "exact", f"§4: {zero_side} = 0 exactly, so ΔW = 0 (the base model at init)",
                  value=float(zero.abs().max())),
        InitClaim(f"{other_name}_all_nonzero", "lower", f"§4: {other_name} ≠ 0 everywhere (with {zero_side} = 0 too "
                  "nothing would ever train)", value=float(bool((other != 0).all())), bound=1.0),
        InitClaim("bases_rank_minus_m", "lower", f"§4: n·r ≥ m = {m}: the n rank-r bases can reach full rank",
                  value=float(lam.shape[0] * lam.shape[1] - m), bound=0.0),
    ]
    small = state["A"].shape[-1]
    if cfg.get("very_sparse") or cfg.get("sparse"):
        s = math.sqrt(small) if cfg.get("very_sparse") else 3.0
        kind = "very_sparse" if cfg.get("very_sparse") else "sparse"
        for k in ("A", "B"):
            claims.append(InitClaim(f"{k}_ternary_spread", "exact", f"{kind}: {k} takes values in {{−c, 0, c}}",
                                    value=_ternary_spread(state[k])))
            claims.append(InitClaim(f"{k}_zero_share_margin", "lower", f"{kind}: P(0) = 1 − 1/s = {1 - 1 / s:.4g} "
                                    f"(s = {s:.4g}); Hoeffding margin at α = {TERNARY_ALPHA:g} over the whole "
                                    f"{k}", value=_zero_share_margin(state[k], 1 - 1 / s), bound=0.0))
    return claims
