"""RoAd (2D rotary adaptation) paper formula (float64), peft's pairing and parameter layout."""

from __future__ import annotations

import torch

from ._common import InitClaim, compute_dtype, f64, linear

EQUATION = "y′ = R(Wx + b),  R = blocks α·[[cos θ, −sin θ], [sin θ, cos θ]] (road_1; road_2/road_4 free per entry)"
CITATION = (
    "Liao & Monz, RoAd / 3-in-1, arXiv:2409.00119, §3 eq. (4) (eq. number taken from peft's road/layer.py "
    "comment, unverified); pairing j ↔ j+g/2 and parameter layout from peft 0.21.2 road/layer.py"
)

VARIANTS = ("road_1", "road_2", "road_4")


def cos_sin_columns(theta: torch.Tensor, alpha: torch.Tensor, variant: str, group_size: int):
    """Per-output-position c_k = α·cos θ and s_k = α·sin θ (length d_out), peft layout.

    road_1: one (α, θ) per pair, index gi·g/2 + j, used at j and j+g/2; road_2: one per position;
    road_4: per group [g cos-column values, g sin-column values] for θ and for α.
    """
    g = int(group_size)
    theta, alpha = f64(theta).reshape(-1), f64(alpha).reshape(-1)
    if variant == "road_1":
        t, a = theta.reshape(-1, g // 2), alpha.reshape(-1, g // 2)
        t, a = torch.cat([t, t], dim=1).reshape(-1), torch.cat([a, a], dim=1).reshape(-1)
        return a * torch.cos(t), a * torch.sin(t)
    if variant == "road_2":
        return alpha * torch.cos(theta), alpha * torch.sin(theta)
    if variant == "road_4":
        t, a = theta.reshape(-1, 2, g), alpha.reshape(-1, 2, g)
        return (a[:, 0] * torch.cos(t[:, 0])).reshape(-1), (a[:, 1] * torch.sin(t[:, 1])).reshape(-1)
    raise ValueError(f"road_variant must be one of {VARIANTS}, got {variant!r}")


def _half_swap(d_out: int, g: int) -> torch.Tensor:
    """Signed permutation J with (Jy)_j = −y_{j+g/2}, (Jy)_{j+g/2} = y_j inside each group of g."""
    J = torch.zeros(d_out, d_out, dtype=compute_dtype())
    h = g // 2
    for start in range(0, d_out, g):
        for j in range(h):
            J[start + j, start + j + h] = -1.0
            J[start + j + h, start + j] = 1.0
    return J


def rotation_matrix(state: dict, cfg: dict, d_out: int) -> torch.Tensor:
    """Dense R (d_out, d_out) = diag(c) + diag(s)·J (arXiv:2409.00119 §3; peft pairing).

    Row j < g/2 of a group: y′_j = c_j y_j − s_j y_{j+g/2}; row j+g/2: y′ = c y_{j+g/2} + s y_j.
    Convention: peft pairs j with j+g/2 inside each group of g = cfg["group_size"]; the paper
    pairs adjacent outputs (2j, 2j+1). Both are the same method up to a fixed output permutation.
    """
    g = int(cfg["group_size"])
    if g <= 0 or g % 2 or d_out % g:
        raise ValueError(f"group_size must be even and divide d_out={d_out}, got {g}")
    c, s = cos_sin_columns(state["theta"], state["alpha"], cfg["road_variant"], g)
    if c.numel() != d_out:
        raise ValueError(f"theta/alpha give {c.numel()} positions, expected d_out={d_out}")
    return torch.diag(c) + s.unsqueeze(1) * _half_swap(d_out, g).to(c.device)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = R W, b_eff = R b: the rotation acts after the bias (arXiv:2409.00119 §3; peft merge).

    state: theta, alpha of size d_out/2 (road_1), d_out (road_2), 2·d_out (road_4).
    cfg: road_variant, group_size.
    """
    W = f64(W)
    R = rotation_matrix(state, cfg, W.shape[0])
    return R @ W, None if b is None else R @ f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: theta, alpha of d_out/2 (road_1), d_out (road_2) or 2·d_out (road_4) entries."""
    n = {"road_1": d_out // 2, "road_2": d_out, "road_4": 2 * d_out}[cfg["road_variant"]]
    return {"theta": (n,), "alpha": (n,)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """RoAd init (arXiv:2409.00119 §3): θ = 0 and α = 1 exactly for every road_variant, so R = I."""
    theta, alpha = state["theta"].detach().to(torch.float64), state["alpha"].detach().to(torch.float64)
    return [InitClaim("theta_max_abs", "exact", "§3: θ = 0 exactly", value=float(theta.abs().max())),
            InitClaim("alpha_minus_one_max_abs", "exact", "§3: α = 1 exactly", value=float((alpha - 1).abs().max()))]
