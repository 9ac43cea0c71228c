"""HRA (Householder Reflection Adaptation) paper formula (float64)."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear

EQUATION = "W′ = W·H₀H₁⋯H_{r−1},  H_i = I − 2u_iu_iᵀ/‖u_i‖²"
CITATION = (
    "Yuan, Liu, Xu, HRA, arXiv:2405.17484, §3 (eq. number unverified); orientation and order follow peft "
    "and the authors' GLUE/diffusion code (right-multiplied W, input side, index order)"
)


def householder_product(u: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
    """H₀H₁⋯H_{r−1} (d_in × d_in) from u (r, d_in), row i = u_i (arXiv:2405.17484 §3).

    ``reverse=True`` gives H_{r−1}⋯H₀ (used only to show that the order matters).
    """
    u = f64(u)
    H = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
    order = range(u.shape[0] - 1, -1, -1) if reverse else range(u.shape[0])
    for i in order:
        ui = u[i] / torch.linalg.vector_norm(u[i])
        H = H - 2.0 * torch.outer(H @ ui, ui)  # H·(I − 2 û ûᵀ)
    return H


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W·H₀⋯H_{r−1}, b_eff = b (arXiv:2405.17484 §3, eq. number unverified).

    state: u (r, d_in), row i = u_i (peft stores the transpose, (d_in, r)).
    Convention: W is right-multiplied (input side), product in index order, as peft and the
    authors' GLUE code; the older llama code in the HRA repo acts on the output side instead.
    """
    u = state["u"]
    if "r" in cfg and int(cfg["r"]) != u.shape[0]:
        raise ValueError(f"u has {u.shape[0]} rows but cfg r = {cfg['r']}")
    return f64(W) @ (span_reflection(u) if cfg.get("apply_gs") else householder_product(u)), f64(b)


def span_reflection(u: torch.Tensor) -> torch.Tensor:
    """peft's apply_GS: H₀⋯H_{r−1} of the Gram–Schmidt-orthonormalised vectors, = I − 2P with P the orthogonal
    projector onto span(u_0..u_{r−1}) (reflections in orthonormal directions commute and multiply to it):
    P = U(UᵀU)⁻¹Uᵀ, U = uᵀ (d_in, r); independent of the order and of the vectors' scales."""
    U = f64(u).T
    P = U @ torch.linalg.solve(U.T @ U, U.T)
    return torch.eye(U.shape[0], dtype=U.dtype, device=U.device) - 2.0 * P


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def orthogonality_error(u: torch.Tensor) -> float:
    """max |HᵀH − I| of H = H₀⋯H_{r−1} (a product of reflections is orthogonal; arXiv:2405.17484 §3)."""
    H = householder_product(u)
    return float((H.T @ H - torch.eye(H.shape[0], dtype=H.dtype)).abs().max())


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: u (r, d_in), row i the Householder vector u_i."""
    r = int(cfg["r"])
    return {"u": (r, d_in)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

MIN_SPREAD = 1e-3  # bound of the "lower" claim: σ_min/σ_max of the distinct vectors


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """HRA symmetric init (arXiv:2405.17484 §3; peft hra/layer.py): u_{2k} = u_{2k+1}, so each pair of
    reflections cancels (H H = I), with the r/2 distinct vectors linearly independent and non-zero.

    HRA is scale invariant (H depends on u/‖u‖), so nothing is stated about the draws' scale (peft:
    kaiming_uniform on (d_in, r/2), i.e. U(±1/√(r/2))). Odd r has no symmetric init (peft warns and
    draws all r at random: not the identity); then only the non-degeneracy of all r vectors is stated, as
    under apply_gs (Gram–Schmidt needs r independent vectors; no identity start exists there).
    """
    u = state["u"].detach().to(torch.float64)
    claims, distinct = [], u
    if u.shape[0] % 2 == 0 and not cfg.get("apply_gs"):
        claims.append(InitClaim("u_pairs_equal_max_abs", "exact", "§3: u_{2k} = u_{2k+1} (paired reflections cancel)",
                                value=float((u[0::2] - u[1::2]).abs().max())))
        distinct = u[0::2]
    sv = torch.linalg.svdvals(distinct)
    spread = float(sv[-1] / sv[0]) if float(sv[0]) > 0 else 0.0
    which = ("all r vectors (Gram–Schmidt needs a basis: a repeated vector leaves only rounding noise to "
             "normalise)" if cfg.get("apply_gs") else "the distinct vectors u_{2k}")
    claims.append(InitClaim("u_distinct_sv_ratio", "lower", f"{which} are non-zero and linearly independent: "
                            "σ_min/σ_max of their stack", value=spread, bound=MIN_SPREAD))
    return claims
