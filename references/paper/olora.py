"""OLoRA paper formula (float64). The layer weight W passed in is the mutated residual W_res."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear, lowrank_scaling, rel_max

EQUATION = "W = QR;  B = Q[:, :r],  A = R[:r, :];  W_res = W − s·BA;  h = W_res x + s·BAx,  s = α/r (rsLoRA α/√r)"
CITATION = (
    "Büyükakyüz, OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models, arXiv:2406.01775, §3 "
    "(eq. numbers unverified; whether the paper's residual carries the scale s is unverified: peft, written by "
    "the paper's author (PR #1828), subtracts s·BA)"
)


def scaling(cfg: dict) -> float:
    """s = alpha/r, or alpha/√r with ``use_rslora`` (OLoRA trains a plain LoRA on top of W_res)."""
    return lowrank_scaling(cfg, allow_rslora=True)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W_res + s·B A, b_eff = b, with W = W_res (arXiv:2406.01775 §3).

    state: A (r, d_in), B (d_out, r).
    """
    return f64(W) + scaling(cfg) * (f64(state["B"]) @ f64(state["A"])), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads (references/STATE_LAYOUT.md): A (r, d_in), B (d_out, r); the
    layer weight is W_res."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """OLoRA init (arXiv:2406.01775 §3): B = Q_r, A = R_r of the QR W = QR of the ORIGINAL W.

    Stated free of the QR's sign convention (a column of Q and the matching row of R may both flip):
    BᵀB = I (orthonormal columns), A = BᵀW (R = QᵀW), B Bᵀ = the orthogonal projector onto the span of
    W's first r columns (Gram–Schmidt order), and A's leading r×r block upper triangular (R is).
    The residual W_res + s·BA = W is a property of the live layer (the card's invariant).
    """
    A, B = state["A"].detach().to(torch.float64), state["B"].detach().to(torch.float64)
    W64 = W.detach().to(torch.float64)
    r = A.shape[0]
    Qc, _ = torch.linalg.qr(W64[:, :r])
    lower = torch.tril(A[:, :r], diagonal=-1)
    return [
        InitClaim("B_orthonormal", "deterministic", "§3: B = Q[:, :r] has orthonormal columns, BᵀB = I",
                  value=rel_max(B.T @ B, torch.eye(r, dtype=torch.float64))),
        InitClaim("A_eq_BtW", "deterministic", "§3: A = R[:r] = Q[:, :r]ᵀ W, i.e. A = BᵀW",
                  value=rel_max(A, B.T @ W64)),
        InitClaim("span_projector", "deterministic",
                  "§3: B Bᵀ = the projector onto the span of W's first r columns (QR's Gram–Schmidt order)",
                  value=rel_max(B @ B.T, Qc @ Qc.T)),
        InitClaim("A_upper_triangular", "deterministic", "§3: A = R[:r] is upper triangular (its leading r×r "
                  "block has no entry below the diagonal)", value=float(lower.abs().max()) / float(A.abs().max())),
    ]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """B = Q[:, :r], A = R[:r] of the QR of W in compute_dtype() (§3); the rank is cfg["r_layer"] when given."""
    r = int(cfg.get("r_layer", cfg["r"]))
    Q, R = torch.linalg.qr(f64(W))
    return {"A": R[:r], "B": Q[:, :r]}
