"""LoRA-GA paper formula (float64). The layer weight W passed to ``merged`` is the mutated residual W_res."""

from __future__ import annotations

import torch

from ._common import InitClaim, compute_dtype, f64, linear, lowrank_scaling

EQUATION = ("G = ∂ℓ/∂W = U S Vᵀ;  A = c·V_Iᵀ, B = c·U_J (I ⊔ J = the top 2r pairs; Alg. 1: I = 1..r, J = r+1..2r);  "
            "c = d_out^{1/4}/√γ;  W_res = W − η·BA")
CITATION = (
    "Wang, Yu, Li, LoRA-GA, arXiv:2407.05000, §3.2 (gradient approximation: A, B from the top-2r singular vectors "
    "of the gradient), §3.3 (stable output scale d_out^{1/4}/√γ), Algorithm 1 (A_l = V_[1:r]·⁴√d_out/√γ, "
    "B_l = U_[r+1:2r]·⁴√d_out/√γ, W_l ← W_l − ηB_lA_l, η = α/√r) (equation numbers unverified)"
)

# what the init check passes as ``inputs``: each layer's loss gradient ∂ℓ/∂W (d_out, d_in) on the calibration
# batches (the mean of the batches' next-token cross-entropy gradients), not its input activations
INIT_DATA = "gradients"


def scaling(cfg: dict) -> float:
    """η = alpha/r, or alpha/√r with use_rslora (Algorithm 1's η)."""
    return lowrank_scaling(cfg, allow_rslora=True)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W_res + η·B A, b_eff = b (arXiv:2407.05000 Alg. 1: the offset base plus the adapter)."""
    return f64(W) + scaling(cfg) * (f64(state["B"]) @ f64(state["A"])), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in),
    B (d_out, r); the layer weight is W_res."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def split(direction: str, r: int) -> tuple[list[int], list[int]]:
    """(A's pair indices, B's), 0-based, of the top 2r singular pairs: Algorithm 1's "ArB2r" and the other splits
    §3.2's optimum allows that the authors' code names ("A2rBr", "ArBr": A odd-numbered 0-based, B even)."""
    return {"ArB2r": (list(range(r)), list(range(r, 2 * r))),
            "A2rBr": (list(range(r, 2 * r)), list(range(r))),
            "ArBr": (list(range(1, 2 * r, 2)), list(range(0, 2 * r, 2)))}[direction]


def stable_scale(d_out: int, cfg: dict) -> float:
    """c on A and B: d_out^{1/4}/√γ (§3.3, Algorithm 1 lines 8-9; γ = cfg["stable_gamma"]) for scale "stable", the
    paper's; the authors' code's ablations "unit" (c = 1) and "gd_scale" (c = 1/η)."""
    scale = cfg.get("scale", "stable")
    if scale == "unit":
        return 1.0
    if scale == "gd_scale":
        return 1.0 / scaling(cfg)
    return d_out ** 0.25 / float(cfg.get("stable_gamma", 16.0)) ** 0.5


def _span_err(M: torch.Tensor, Q: torch.Tensor) -> float:
    """‖P_M − QQᵀ‖₂: the distance between the projectors onto span of M's columns and span(Q) (Q orthonormal
    columns), whatever M's scale (its numerically nonzero singular directions)."""
    U, S, _ = torch.linalg.svd(M, full_matrices=False)
    P = U[:, S > 1e-6 * S[0]] if float(S[0]) > 0 else U[:, :0]
    return float(torch.linalg.matrix_norm(P @ P.T - Q @ Q.T, ord=2))


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """LoRA-GA init (arXiv:2407.05000 §3.2-3.3, Algorithm 1), ``inputs`` = the layer's gradient G (d_out, d_in).

    Stated up to the signs of the singular pairs and rotations inside repeated singular values: A's rows and B's
    columns are c times orthonormal (AAᵀ = BᵀB = c²I, c = d_out^{1/4}/√γ); their spans are those of V_I and U_J for
    the configured split (projector distances, free of the factors' scale); and the first step they give approximates G as
    §3.2 states: (G AᵀA + BBᵀG)/c² = G_2r, the top-2r part of G (relative to its max), whatever the split.
    """
    if inputs is None:
        raise ValueError("LoRA-GA's init is gradient-driven: pass the layer's loss gradient ∂ℓ/∂W (d_out, d_in)")
    A, B = state["A"].detach().to(torch.float64), state["B"].detach().to(torch.float64)
    G = inputs.detach().to(torch.float64)
    r, d_out = A.shape[0], B.shape[0]
    c2 = stable_scale(d_out, cfg) ** 2
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    ia, ib = split(cfg.get("direction", "ArB2r"), r)
    G2r = (U[:, :2 * r] * S[:2 * r]) @ Vh[:2 * r]
    step = (G @ A.T @ A + B @ B.T @ G) / c2
    eye = torch.eye(r, dtype=A.dtype)
    return [
        InitClaim("A_scaled_orthonormal", "deterministic", "§3.3: AAᵀ = c²I, c = d_out^{1/4}/√γ (max entry error / c²)",
                  value=float((A @ A.T / c2 - eye).abs().max())),
        InitClaim("B_scaled_orthonormal", "deterministic", "§3.3: BᵀB = c²I, c = d_out^{1/4}/√γ (max entry error / c²)",
                  value=float((B.T @ B / c2 - eye).abs().max())),
        InitClaim("A_subspace_err", "deterministic", "§3.2, Alg. 1: rows of A span V_I (the split's right singular "
                  "vectors of G): ‖P_row(A) − V_IV_Iᵀ‖₂", value=_span_err(A.T, Vh[ia].T)),
        InitClaim("B_subspace_err", "deterministic", "§3.2, Alg. 1: columns of B span U_J (the split's left singular "
                  "vectors of G): ‖P_col(B) − U_JU_Jᵀ‖₂", value=_span_err(B, U[:, ib])),
        InitClaim("gradient_approximation_err", "deterministic", "§3.2: (G AᵀA + BBᵀG)/c² = G_2r, the best rank-2r "
                  "approximation of G (relative to max|G_2r|)",
                  value=float((step - G2r).abs().max() / G2r.abs().max().clamp(min=1e-300))),
    ]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """A = c·V_Iᵀ, B = c·U_J from the SVD of G in compute_dtype() (Algorithm 1, with the configured split).

    G is first rounded to W's dtype, as a weight gradient is held (autograd's .grad has the weight's dtype): the
    spread this statement's tolerance is built from then carries how far that rounding moves the subspaces
    (a small gap σ_2r − σ_2r+1 amplifies it)."""
    r = int(cfg.get("r_layer", cfg["r"]))
    U, _, Vh = torch.linalg.svd(inputs.detach().to(W.dtype).to(compute_dtype()), full_matrices=False)
    ia, ib = split(cfg.get("direction", "ArB2r"), r)
    c = stable_scale(W.shape[0], cfg)
    return {"A": c * Vh[ia], "B": c * U[:, ib]}
