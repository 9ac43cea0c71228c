"""OFT (Orthogonal Finetuning) paper formula (float64), exact Cayley and OFTv2's Cayley–Neumann series."""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, f64, linear

EQUATION = "W′ = W Rᵀ (y = (xR)Wᵀ + b),  R = ⊕ R_i,  R_i = (I + Q_i)(I − Q_i)⁻¹,  Q_i = −Q_iᵀ"
CITATION = (
    "Qiu et al., Controlling Text-to-Image Diffusion by Orthogonal Finetuning, arXiv:2306.07280, §3-4 (Cayley "
    "eq. 4; block-diagonal R; W_p' = R W_p⁰ in the paper's d×n layout); Cayley–Neumann series: Qiu et al., "
    "OFTv2, arXiv:2506.19847, §3 (section number unverified), with peft ≥ 0.18's coefficients"
)


def skew(q: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n, b, b) skew-symmetric Q_i from q (n, b(b−1)/2): the strict upper triangle filled row by row
    (torch.triu_indices order), then Q_i − Q_iᵀ (out of place, autograd-safe)."""
    b = int(block_size)
    q = f64(q)
    rows, cols = torch.triu_indices(b, b, 1)
    idx = (rows * b + cols).to(q.device).expand(q.shape[0], -1)
    m = torch.zeros(q.shape[0], b * b, dtype=q.dtype, device=q.device).scatter(1, idx, q).reshape(-1, b, b)
    return m - m.transpose(-1, -2)


def neumann_terms(cfg: dict) -> int:
    t = int(cfg.get("num_neumann_terms", 5))
    if t < 2:
        raise ValueError(f"num_neumann_terms must be >= 2, got {t}")
    return t


def coft_radius(cfg: dict, n_rows: int) -> float:
    """COFT's radius on each skew block, ‖Q_i‖_F ≤ ε/√n (n = rows of Q: the blocks, or 1 under block_share)."""
    return float(cfg.get("eps", 6e-5)) / math.sqrt(n_rows)


def coft_project(q: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Constrained OFT (arXiv 2306.07280 §3, COFT: R kept within a radius of I; eq. number unverified), with
    the radius on each skew block as peft states it (ε/√n on ‖Q_i‖_F, tuners/oft/layer.py _project_batch):
    q_i ← q_i·min(1, ρ/‖Q_i‖_F). A projection between optimiser steps (projected gradient descent): the
    value is projected, the gradient passes straight through."""
    if not cfg.get("coft"):
        return q
    q = f64(q)
    norm = math.sqrt(2.0) * q.detach().norm(dim=1, keepdim=True)  # ‖Q_i‖_F of the skew block
    rho = coft_radius(cfg, q.shape[0])
    scale = torch.where(norm > rho, rho / norm.clamp(min=1e-300), torch.ones_like(norm))
    return q + (q * scale - q).detach()


def rotation_blocks(q: torch.Tensor, cfg: dict) -> torch.Tensor:
    """(n, b, b) blocks R_i.

    Exact (paper eq. 4): R_i = (I + Q_i)(I − Q_i)⁻¹, orthogonal for skew Q_i.
    use_cayley_neumann (OFTv2): (I − Q)⁻¹ ≈ Σ_{k=0}^{t−2} Q^k, R_i = (I + Q_i)Σ_{k=0}^{t−2} Q_i^k
    = I + 2Q + … + 2Q^{t−2} + Q^{t−1} = C_i(I − Q_i^{t−1}), C_i the exact R_i.
    """
    b = int(cfg["block_size"])
    s = skew(q, b)
    eye = torch.eye(b, dtype=s.dtype, device=s.device)
    if not cfg.get("use_cayley_neumann", False):
        return torch.linalg.solve(eye - s, eye + s)  # (I − Q)⁻¹(I + Q) = (I + Q)(I − Q)⁻¹: they commute
    series, power = eye.expand_as(s), eye.expand_as(s)
    for _ in range(neumann_terms(cfg) - 2):
        power = power @ s
        series = series + power
    return (eye + s) @ series


def shared(q: torch.Tensor, cfg: dict, d_in: int) -> torch.Tensor:
    """The Q that acts, one row per diagonal block: COFT-projected (``coft_project``), and under peft's
    block_share the single row Q_0 on all d_in/b positions."""
    bs = int(cfg["block_size"])
    q = coft_project(q, cfg)
    return q.expand(d_in // bs, -1) if cfg.get("block_share") else q


def rotation(state: dict, cfg: dict, d_in: int | None = None) -> torch.Tensor:
    """R = blockdiag(R_1..R_n) (d_in × d_in) in the compute dtype (block_share: R_0 on every position)."""
    q = coft_project(state["Q"], cfg) if d_in is None else shared(state["Q"], cfg, d_in)
    return torch.block_diag(*rotation_blocks(q, cfg).unbind(0))


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W Rᵀ, b_eff = b: R acts on the layer input, y = (x R) Wᵀ + b (arXiv:2306.07280 §3).

    state: Q (n_blocks, b(b−1)/2), row i the strict upper triangle of Q_i (peft's oft_R weight).
    cfg: block_size (must divide d_in), use_cayley_neumann, num_neumann_terms.
    """
    W = f64(W)
    bs = int(cfg["block_size"])
    if W.shape[1] % bs or state["Q"].shape != layout(W.shape[1], W.shape[0], cfg)["Q"]:
        raise ValueError(f"block_size {bs} does not fit d_in={W.shape[1]} with Q {tuple(state['Q'].shape)}")
    return W @ rotation(state, cfg, W.shape[1]).T, f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: Q
    (d_in/b, b(b−1)/2). A block size that does not divide d_in has no paper layout: the shape given
    (⌊d_in/b⌋ rows) is one no faithful implementation holds, so a subject that silently changes b shows
    as a shape mismatch."""
    bs = int(cfg["block_size"])
    return {"Q": (1 if cfg.get("block_share") else d_in // bs, bs * (bs - 1) // 2)}


def stated_singular_values(q: torch.Tensor, cfg: dict) -> torch.Tensor:
    """The singular values of R (all blocks, ascending) that the configured transform states, float64.

    Exact Cayley: all 1 (orthogonal). Cayley–Neumann: R_i = C_i(I − Q_i^{t−1}) with C_i orthogonal and
    commuting with Q_i, whose eigenvalues are ±iθ (θ: singular values of Q_i), so σ = |1 − (iθ)^{t−1}|:
    1 − θ⁴ for t = 5 (contracts), √(1 + θ⁶) for t = 4 (expands).
    """
    s = skew(q.detach().to(torch.float64), int(cfg["block_size"]))
    if not cfg.get("use_cayley_neumann", False):
        return torch.ones(s.shape[0] * s.shape[1], dtype=torch.float64)
    theta = torch.linalg.svdvals(s).reshape(-1).to(torch.complex128)
    sv = (1 - (1j * theta) ** (neumann_terms(cfg) - 1)).abs()
    return torch.sort(sv).values


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """OFT init (arXiv:2306.07280 §3): Q = 0 exactly, so R = I (the finetuned model starts at the
    pretrained one, for the exact Cayley map and its Neumann series alike)."""
    q = state["Q"].detach().to(torch.float64)
    return [InitClaim("Q_max_abs", "exact", "§3: Q = 0 exactly (R = I)", value=float(q.abs().max()))]

