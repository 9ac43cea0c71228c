"""PiSSA paper formula (float64). The layer weight W passed in is the mutated residual W_res."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear, lowrank_scaling, rel_max

EQUATION = "W = W^res + s·BA,  s·BA = U_r S_r V_rᵀ (principal part),  W^res = U_[r:] S_[r:] V_[r:]ᵀ"
CITATION = (
    "Meng, Wang, Zhang, PiSSA, arXiv:2404.02948, §3 (eq. numbers unverified; the paper has no α/r factor, "
    "i.e. α = r; the paper's A/B naming may be swapped relative to peft's)"
)


def scaling(cfg: dict) -> float:
    """s = alpha/r (STATE_LAYOUT.md); ``use_rslora`` is refused (not part of the reference formula)."""
    return lowrank_scaling(cfg, allow_rslora=False)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W_res + s·B A, b_eff = b, with W = W_res (arXiv:2404.02948 §3, eq. number unverified).

    state: A (r, d_in), B (d_out, r). peft divides S_r by s before the square root so that
    s·B A = U_r S_r V_rᵀ; the merged weight is the same for any α.
    """
    return f64(W) + scaling(cfg) * (f64(state["B"]) @ f64(state["A"])), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def reconstruction_error(W_orig: torch.Tensor, W_res: torch.Tensor, state: dict, cfg: dict) -> float:
    """max|W_res + s·B A − W_orig| / max|W_orig| (PiSSA's W = W^res + AB, arXiv:2404.02948 §3)."""
    W_eff, _ = merged(W_res, None, state, cfg)
    W0 = f64(W_orig)
    return float((W_eff - W0).abs().max() / W0.abs().max())


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in), B (d_out, r); the layer weight is W_res."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def _top_svd(W: torch.Tensor, r: int):
    """U_r, S_r, V_rᵀ of W in the tensor's dtype (descending singular values)."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return U[:, :r], S[:r], Vh[:r]


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """PiSSA init (arXiv:2404.02948 §3, with peft's α: S_r divided by s = α/r before the square root).

    A = diag(√(S_r/s)) V_rᵀ, B = U_r diag(√(S_r/s)) of the ORIGINAL W: stated up to the signs of the
    singular pairs and rotations inside repeated singular values, i.e. as the Gram matrices
    AAᵀ = BᵀB = diag(S_r/s) (balanced split, relative to max S_r/s) and the principal part
    s·BA = U_r S_r V_rᵀ (relative to its max). use_rslora is refused (s = α/√r is never PiSSA).
    """
    s = scaling(cfg)
    A, B = state["A"].detach().to(torch.float64), state["B"].detach().to(torch.float64)
    U, S, Vh = _top_svd(W.detach().to(torch.float64), A.shape[0])
    D = torch.diag(S / s)
    return [
        InitClaim("A_gram_balanced", "deterministic", "§3: AAᵀ = diag(S_r/s) (A = diag(√(S_r/s)) V_rᵀ)",
                  value=rel_max(A @ A.T, D)),
        InitClaim("B_gram_balanced", "deterministic", "§3: BᵀB = diag(S_r/s) (B = U_r diag(√(S_r/s)))",
                  value=rel_max(B.T @ B, D)),
        InitClaim("principal_part", "deterministic", "§3: s·BA = U_r S_r V_rᵀ, the top-r SVD part of W",
                  value=rel_max(s * (B @ A), (U * S) @ Vh)),
    ]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """A = diag(√(S_r/s)) V_rᵀ, B = U_r diag(√(S_r/s)) from the SVD of W in compute_dtype() (§3).

    The rank is the layer's (cfg["r_layer"] when the audit gives it), s = alpha / cfg["r"].
    """
    r = int(cfg.get("r_layer", cfg["r"]))
    U, S, Vh = _top_svd(f64(W), r)
    sq = torch.sqrt(S / scaling(cfg))
    return {"A": sq.unsqueeze(1) * Vh, "B": U * sq}
