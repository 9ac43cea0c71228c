"""AntiPaSTO paper formula, torch hook formulation (float64). W passed in is the mutated W_res."""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, f64, linear, normal_pit, rel_max

EQUATION = "W′ = W_res + U_r diag(S_r+δ) R_bd Vh_r,  R_i = (I−X)⁻¹(I+X),  X = ½·a_lim·tanh(½(M−Mᵀ)/a_lim)"
CITATION = (
    "M. J. Clark, AntiPaSTO, arXiv:2601.07473 (section and eq. numbers unverified); the Cayley map, tanh "
    "saturation and U/V/none rotate_basis follow the torch formulation in VARIANTS.md §9"
)


def skew_blocks(T: torch.Tensor, block_size: int) -> torch.Tensor:
    """A_i = ½(M_i − M_iᵀ), M_i strictly upper triangular filled from T[i] in triu_indices(bs, bs, 1) order."""
    T = f64(T)
    bs = int(block_size)
    iu = torch.triu_indices(bs, bs, 1)
    if T.shape[-1] != iu.shape[1]:
        raise ValueError(f"T has {T.shape[-1]} entries per block, expected bs(bs−1)/2 = {iu.shape[1]}")
    # fill via a constant 0/1 scatter matrix (no index assignment into tensors that carry grad)
    E = torch.zeros(bs * bs, iu.shape[1], dtype=T.dtype, device=T.device)
    E[iu[0] * bs + iu[1], torch.arange(iu.shape[1])] = 1.0
    M = (T @ E.T).reshape(T.shape[0], bs, bs)
    return 0.5 * (M - M.transpose(1, 2))


def rotation_blocks(T: torch.Tensor, cfg: dict) -> torch.Tensor:
    """R_i (n_blocks, bs, bs) = solve(I − X, I + X), X = A/2, A ← a_lim·tanh(A/a_lim), a_lim = 2·tan(θ_max/2).

    A ``max_rotation_angle`` of None or inf disables the saturation.
    """
    A = skew_blocks(T, cfg["block_size"])
    theta_max = cfg.get("max_rotation_angle")
    if theta_max is not None and math.isfinite(float(theta_max)):
        a_lim = 2.0 * math.tan(float(theta_max) / 2.0)
        A = a_lim * torch.tanh(A / a_lim)
    X = A / 2.0
    eye = torch.eye(X.shape[-1], dtype=X.dtype, device=X.device).expand_as(X)
    return torch.linalg.solve(eye - X, eye + X)


def rotation_blockdiag(T: torch.Tensor, cfg: dict) -> torch.Tensor:
    """R_bd = blockdiag(R_1, …, R_n) of size (r, r), blocks along the r dimension."""
    return torch.block_diag(*rotation_blocks(T, cfg).unbind(0))


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff for the torch formulation (arXiv:2601.07473; VARIANTS.md §9), b_eff = b.

    rotate_basis "V" (default, input side): W_res + U diag(S+δ) R_bd Vh   (Vh_eff = R_bd Vh)
    rotate_basis "U" (output side):        W_res + U R_bdᵀ diag(S+δ) Vh   (U_eff = U R_bdᵀ)
    rotate_basis "none":                   W_res + U diag(S+δ) Vh
    state: U (d_out, r), S (r), Vh (r, d_in), delta (r), T (n_blocks, bs(bs−1)/2).
    Convention: this is the torch chirality (R); antipasto3 uses Rᵀ (see references/antipasto3.py).
    """
    U, Vh = f64(state["U"]), f64(state["Vh"])
    s = f64(state["S"]).reshape(-1) + f64(state["delta"]).reshape(-1)
    basis = cfg.get("rotate_basis", "V")
    if basis == "none":
        core = torch.diag(s)
    else:
        R = rotation_blockdiag(state["T"], cfg)
        if R.shape[0] != s.shape[0]:
            raise ValueError(f"T gives rotations of size {R.shape[0]}, expected r = {s.shape[0]}")
        if basis == "V":
            core = s.unsqueeze(1) * R
        elif basis == "U":
            core = R.T * s.unsqueeze(0)
        else:
            raise ValueError(f"rotate_basis must be 'V', 'U' or 'none', got {basis!r}")
    return f64(W) + U @ core @ Vh, f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def rotation_orthogonality_error(T: torch.Tensor, cfg: dict) -> float:
    """max |R_iᵀR_i − I| over blocks (the Cayley map of a skew matrix is orthogonal)."""
    R = rotation_blocks(T, cfg)
    eye = torch.eye(R.shape[-1], dtype=R.dtype)
    return float((R.transpose(1, 2) @ R - eye).abs().max())


def max_rotation_angle(T: torch.Tensor, cfg: dict) -> float:
    """Largest eigen-angle |atan2(Im λ, Re λ)| (radians) over the eigenvalues λ of every block R_i.

    The tanh saturation bounds this by cfg["max_rotation_angle"] exactly only for block_size 2;
    for bs ≥ 3 the elementwise tanh does not bound the spectrum, so report the measured value.
    """
    lam = torch.linalg.eigvals(rotation_blocks(T, cfg).detach())
    return float(torch.atan2(lam.imag, lam.real).abs().max())


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: U (d_out, r), S (r), Vh (r, d_in), delta (r), T (r/bs, bs(bs-1)/2)."""
    r, bs = int(cfg["r"]), int(cfg["block_size"])
    return {"U": (d_out, r), "S": (r,), "Vh": (r, d_in), "delta": (r,), "T": (r // bs, bs * (bs - 1) // 2)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

# δ's stated draw (VARIANTS.md §9, torch formulation): N(4e-4, (4e-4)²), a small positive offset that breaks
# the sign symmetry (deliberately not the identity). antipasto3 truncates it at ±2σ; with a layer's r draws
# a KS test barely sees the 4.6% of mass outside ±2σ, and the statement keeps the untruncated normal.
DELTA_MEAN, DELTA_STD = 4e-4, 4e-4


def _selected_svd(W: torch.Tensor, r: int, inputs: torch.Tensor | None):
    """U (d_out, r), S (r), Vh (r, d_in) of W in W's dtype: the top r, or, given calibration inputs, the r
    components with the largest score_i = S_i·mean|x·vh_i| kept in index order (VARIANTS.md §9)."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    r = min(r, S.shape[0])  # r is capped by min(d_in, d_out)
    if inputs is None:
        idx = torch.arange(r)
    else:
        score = S * (inputs.detach().reshape(-1, W.shape[1]).to(W.dtype) @ Vh.T).abs().mean(dim=0)
        idx = torch.sort(torch.topk(score, r).indices).values
    return U[:, idx], S[idx], Vh[idx]


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """AntiPaSTO init (arXiv:2601.07473; VARIANTS.md §9 torch formulation): U, S, Vh = the top-r SVD of the
    ORIGINAL W (with calibration inputs: the r best-scored components, index order), stated up to the
    signs of the singular pairs: S = S_r, U diag(S) Vh = U_r S_r V_rᵀ, orthonormal U columns and Vh rows;
    T = 0 exactly (R = I); δ ~ N(4e-4, (4e-4)²).
    """
    U, S, Vh = (state[k].detach().to(torch.float64) for k in ("U", "S", "Vh"))
    S = S.reshape(-1)
    U0, S0, Vh0 = _selected_svd(W.detach().to(torch.float64), S.shape[0], inputs)
    eye = torch.eye(S.shape[0], dtype=torch.float64)
    return [
        InitClaim("S_singular_values", "deterministic", "S = the selected (top-r) singular values of W",
                  value=rel_max(S, S0)),
        InitClaim("principal_part", "deterministic", "U diag(S) Vh = U_r S_r V_rᵀ of W",
                  value=rel_max((U * S) @ Vh, (U0 * S0) @ Vh0)),
        InitClaim("U_orthonormal_cols", "deterministic", "UᵀU = I", value=float((U.T @ U - eye).abs().max())),
        InitClaim("Vh_orthonormal_rows", "deterministic", "Vh Vhᵀ = I", value=float((Vh @ Vh.T - eye).abs().max())),
        InitClaim("T_max_abs", "exact", "T = 0 exactly (R = I)", value=float(state["T"].detach().abs().max())),
        InitClaim("delta_normal", "distribution", f"δ ~ N({DELTA_MEAN:g}, ({DELTA_STD:g})²)",
                  pit=normal_pit(state["delta"], DELTA_MEAN, DELTA_STD)),
    ]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """U, S, Vh from the SVD of W in compute_dtype() (top r, or scored with calibration inputs); the rank
    is the layer's (cfg["r_layer"] when the audit gives it, else cfg["r"], capped by min(d_in, d_out))."""
    U, S, Vh = _selected_svd(f64(W), int(cfg.get("r_layer", cfg["r"])), inputs)
    return {"U": U, "S": S, "Vh": Vh}
