"""EVA (Explained Variance Adaptation) paper formula (float64): a LoRA forward with data-driven A."""

from __future__ import annotations

import torch

from . import lora
from ._common import InitClaim, compute_dtype, f64, linear

EQUATION = "W′ = W + (α/r)·B_l A_l,  rows of A_l = top-r_l principal directions of the layer inputs"
CITATION = (
    "Paischer et al., EVA, arXiv:2410.07170, §3 (eq. number unverified); scaling per peft "
    "adjust_scaling_factors: α_l = α·r_l/r so s_l = α/r for every layer"
)


def scaling(cfg: dict) -> float:
    """s = alpha / r with the *config* r, even though A has r_l rows after rank redistribution."""
    r = int(cfg["r"])
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    return float(cfg["alpha"]) / r


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + (alpha/r)·B A, b_eff = b (arXiv:2410.07170 §3, eq. number unverified).

    state: A (r_l, d_in), B (d_out, r_l). Convention: s uses cfg["r"], not r_l (peft's
    adjust_scaling_factors keeps α_l/r_l = α/r; with rsLoRA it also gives α/r).
    """
    A, B = f64(state["A"]), f64(state["B"])
    if A.shape[0] != B.shape[1]:
        raise ValueError(f"A has {A.shape[0]} rows but B has {B.shape[1]} columns")
    # adjust_scaling_factors=False (peft's option): every layer keeps alpha, so s_l = alpha / r_l
    s = scaling(cfg) if cfg.get("adjust_scaling_factors", True) else float(cfg["alpha"]) / max(A.shape[0], 1)
    return f64(W) + s * (B @ A), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r_l, d_in), B (d_out, r_l); r_l is per layer (None: any)."""
    return {"A": (None, d_in), "B": (d_out, None)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

# Data choices of the statement: the paper's PCA (and peft's IncrementalPCA) centres the layer inputs;
# the audit's calibration has no padding tokens, so no token is masked out.
CENTRED = True
MASK = "none"


def _centred_tokens(inputs: torch.Tensor, d_in: int, dtype: torch.dtype) -> torch.Tensor:
    """The layer inputs as (tokens, d_in) in ``dtype``, minus their mean when CENTRED."""
    if inputs is None:
        raise ValueError("EVA's init is data-driven: pass the layer's calibration inputs (tokens, d_in)")
    X = inputs.detach().reshape(-1, d_in).to(dtype)
    return X - X.mean(dim=0, keepdim=True) if CENTRED else X


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """EVA init (arXiv:2410.07170 §3): B = 0, and the r_l rows of A (r_l = state["A"].shape[0]) are the
    top-r_l principal directions of the layer's centred inputs (no whitening), stated up to signs and
    rotations inside the subspace: AAᵀ = I; ‖AᵀA − VVᵀ‖₂ (V: top-r_l eigenvectors of the covariance C);
    1 − tr(Qᵀ C Q)/Σ top-r_l eigenvalues of C (Q: orthonormal basis of A's row space; ≥ 0, 0 exactly on
    the principal subspace, and first-order insensitive to near-ties in the spectrum).
    """
    A = state["A"].detach().to(torch.float64)
    r_l, d_in = A.shape
    X = _centred_tokens(inputs, d_in, torch.float64)
    C = X.T @ X / max(X.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(C)  # ascending
    V, top = evecs[:, d_in - r_l:], evals[d_in - r_l:].sum()
    if cfg.get("whiten"):
        return [lora.zero_claim("B", state["B"], "EVA §3"), *_whitened_claims(A, evals.flip(0)[:r_l], C, V, top)]
    _, sa, Vha = torch.linalg.svd(A, full_matrices=False)
    Q = Vha[sa > 1e-6 * sa[0]].T if float(sa[0]) > 0 else A.new_zeros(d_in, 0)
    shortfall = 1.0 - float(torch.trace(Q.T @ C @ Q) / top) if float(top) > 0 else 0.0
    eye = torch.eye(r_l, dtype=A.dtype)
    return [
        lora.zero_claim("B", state["B"], "EVA §3"),
        InitClaim("A_orthonormal_rows", "deterministic", "§3: rows of A orthonormal (AAᵀ = I)",
                  value=float((A @ A.T - eye).abs().max())),
        InitClaim("A_subspace_err", "deterministic", "§3: row space of A = top-r_l principal subspace of the "
                  "centred inputs: ‖AᵀA − VVᵀ‖₂", value=float(torch.linalg.matrix_norm(A.T @ A - V @ V.T, ord=2))),
        InitClaim("captured_variance_shortfall", "deterministic", "§3: A's row space captures the top-r_l "
                  "explained variance: 1 − tr(QᵀCQ)/Σλ_top", value=max(shortfall, 0.0)),
    ]


def _whitened_claims(A, lam, C, V, top) -> list[InitClaim]:
    """peft's whiten: row i of A is the i-th principal direction over √σ_i, σ_i = √(n·λ_i) the singular value
    of the centred token matrix, so ‖a_i‖·λ_i^{1/4} is one number for every row; n (the tokens the PCA saw:
    peft's incremental PCA stops at convergence) is left free. Rows orthogonal, spanning the top subspace."""
    norms = A.norm(dim=1)
    unit = A / norms.clamp(min=1e-300)[:, None]
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    c = norms * lam.clamp(min=1e-300).pow(0.25)
    Q = unit.T
    shortfall = 1.0 - float(torch.trace(Q.T @ C @ Q) / top) if float(top) > 0 else 0.0
    return [
        InitClaim("A_orthogonal_rows", "deterministic", "whiten: rows of A orthogonal (unit rows: ÂÂᵀ = I)",
                  value=float((unit @ unit.T - eye).abs().max())),
        InitClaim("A_whitening_spread", "deterministic", "whiten: ‖a_i‖·λ_i^{1/4} equal for every row "
                  "(max/min − 1)", value=float(c.max() / c.min() - 1.0) if float(c.min()) > 0 else 1.0),
        InitClaim("A_subspace_err", "deterministic", "§3: row space of A = top-r_l principal subspace of the "
                  "centred inputs: ‖ÂᵀÂ − VVᵀ‖₂", value=float(torch.linalg.matrix_norm(Q @ Q.T - V @ V.T, ord=2))),
        InitClaim("captured_variance_shortfall", "deterministic", "§3: A's row space captures the top-r_l "
                  "explained variance: 1 − tr(ÂCÂᵀ)/Σλ_top", value=max(shortfall, 0.0)),
    ]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """A = top-r_l right singular vectors of the centred inputs, in compute_dtype() (§3).

    The rank is cfg["r_layer"] when present (EVA redistributes ranks per layer), else cfg["r"].
    """
    r_l = int(cfg.get("r_layer", cfg["r"]))
    X = _centred_tokens(inputs, W.shape[1], compute_dtype())
    _, sv, vh = torch.linalg.svd(X, full_matrices=False)
    A = vh[:r_l] / sv[:r_l].sqrt()[:, None] if cfg.get("whiten") else vh[:r_l]  # whiten: over √σ_i (peft)
    return {"A": A}
