"""Independent torch port of the antipasto3 SVD adapter math (the author's Flax adapter), float64.

Written from the description in VARIANTS.md §9 "antipasto3 (Flax)", not from any code.

antipasto3 works on the kernel ``K = Wᵀ`` of shape (in, out) and its SVD ``K = U diag(S) Vh``, so
**its U (in, r) is the input-side basis and its Vh (r, out) the output-side basis** (the opposite of
the torch naming, where W = U_t diag(S) Vh_t has U_t on the output side). With steering coefficient
α (``coeff``)::

    R(α)   = Cayley(α·X),  X = ½·a_lim·tanh(A/a_lim),  A = ½(M − Mᵀ),  a_lim = 2·tan(max_angle/2)
    S(α)   = S + α·δ
    U_rot  = U R_U(α)          (rotate_U, the default)
    Vh_rot = R_V(α)ᵀ Vh        (rotate_V, off by default)
    K_eff  = K_res + U_rot diag(S(α)) Vh_rot

Chirality: the torch formulation (references/paper/antipasto.py) rotates with R where antipasto3
has Rᵀ. With U_a = Vh_tᵀ and Vh_a = U_tᵀ:
  * torch "V" (input side)  W_res + U_t diag(S+δ) R Vh_t  ==  antipasto3 rotate_U with R_U = Rᵀ;
  * torch "U" (output side) W_res + U_t Rᵀ diag(S+δ) Vh_t ==  antipasto3 rotate_V with R_V = Rᵀ.
Since A(T) is linear and tanh odd, Rᵀ(T) = R(−T), so ``from_torch_state`` sets T_a3 = −T at α = 1.
The port keeps separate T_U and T_V (a port choice; the mapping only ever sets one of them).
"""

from __future__ import annotations

import math

import torch

DTYPE = torch.float64


def _skew(T: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block-diagonal skew matrix (r, r): in each block, entry (p, q), p < q, is T[i, k]/2 in triu order."""
    T = T.to(DTYPE)
    bs = int(block_size)
    n, k = T.shape
    pairs = [(p, q) for p in range(bs) for q in range(p + 1, bs)]  # row-major strict upper triangle
    if k != len(pairs):
        raise ValueError(f"T has {k} entries per block, expected {len(pairs)} for block_size {bs}")
    rows = torch.tensor([i * bs + p for i in range(n) for p, _ in pairs], dtype=torch.long)
    cols = torch.tensor([i * bs + q for i in range(n) for _, q in pairs], dtype=torch.long)
    upper = torch.zeros(n * bs, n * bs, dtype=DTYPE).index_put((rows, cols), T.reshape(-1))  # out of place
    return (upper - upper.T) / 2.0


def cayley(T: torch.Tensor, block_size: int, max_angle: float | None, coeff: float = 1.0) -> torch.Tensor:
    """R(α) (r, r), block-diagonal: (I − αX)⁻¹(I + αX) with X = ½·a_lim·tanh(A/a_lim).

    ``max_angle`` None/inf disables the saturation. R(α) is orthogonal and R(−α) = R(α)ᵀ.
    """
    A = _skew(T, block_size)
    if max_angle is not None and math.isfinite(float(max_angle)):
        a_lim = 2.0 * math.tan(float(max_angle) / 2.0)
        A = a_lim * torch.tanh(A / a_lim)
    X = float(coeff) * A / 2.0
    eye = torch.eye(X.shape[0], dtype=DTYPE)
    return torch.linalg.solve(eye - X, eye + X)


def decompose(W: torch.Tensor, r: int, block_size: int | None = None) -> dict:
    """antipasto3 factors of a torch-layout W (d_out, d_in): K = Wᵀ = K_res + U diag(S) Vh, top r.

    Returns {"K_res" (in, out), "U" (in, r), "S" (r), "Vh" (r, out)}. With ``block_size`` given,
    r is rounded down to a multiple of it (antipasto3's behaviour).
    """
    K = W.to(DTYPE).T
    if block_size:
        r = (int(r) // int(block_size)) * int(block_size)
    U, S, Vh = torch.linalg.svd(K, full_matrices=False)
    U, S, Vh = U[:, :r], S[:r], Vh[:r]
    return {"K_res": K - (U * S) @ Vh, "U": U, "S": S, "Vh": Vh}


def merged_kernel(params: dict, hp: dict, coeff: float = 1.0) -> torch.Tensor:
    """K_eff (in, out) = K_res + U_rot diag(S + α·δ) Vh_rot.

    params: K_res, U, S, Vh, delta, and T_U / T_V (n_blocks, bs(bs−1)/2) for the enabled sides.
    hp: block_size, max_angle, rotate_U (default True), rotate_V (default False).
    """
    U, Vh = params["U"].to(DTYPE), params["Vh"].to(DTYPE)
    S_a = params["S"].to(DTYPE) + float(coeff) * params["delta"].to(DTYPE)
    if hp.get("rotate_U", True):
        U = U @ cayley(params["T_U"], hp["block_size"], hp["max_angle"], coeff)
    if hp.get("rotate_V", False):
        Vh = cayley(params["T_V"], hp["block_size"], hp["max_angle"], coeff).T @ Vh
    return params["K_res"].to(DTYPE) + U @ torch.diag(S_a) @ Vh


def to_torch_weight(params: dict, hp: dict, coeff: float = 1.0) -> torch.Tensor:
    """W_eff in torch layout (d_out, d_in) = K_effᵀ."""
    return merged_kernel(params, hp, coeff).T


def from_torch_state(state: dict, cfg: dict, W_res: torch.Tensor | None = None) -> tuple[dict, dict]:
    """Map a canonical torch AntiPaSTO state (STATE_LAYOUT.md) to antipasto3 (params, hp).

    Naming swap: U_a3 = Vh_tᵀ (in, r), Vh_a3 = U_tᵀ (r, out), K_res = W_resᵀ (zeros when W_res is
    None, so the result is the adapter term alone). Chirality: torch R = antipasto3 Rᵀ, and
    Rᵀ(T) = R(−T), so T_a3 = −T: rotate_basis "V" -> rotate_U with T_U = −T; "U" -> rotate_V with
    T_V = −T; "none" -> no rotation. The result matches the torch formula at coeff = 1.
    """
    U_t, Vh_t = state["U"].to(DTYPE), state["Vh"].to(DTYPE)
    K_res = W_res.to(DTYPE).T if W_res is not None else torch.zeros(Vh_t.shape[1], U_t.shape[0], dtype=DTYPE)
    params = {"K_res": K_res, "U": Vh_t.T, "S": state["S"].to(DTYPE).reshape(-1),
              "Vh": U_t.T, "delta": state["delta"].to(DTYPE).reshape(-1)}
    basis = cfg.get("rotate_basis", "V")
    if basis not in ("V", "U", "none"):
        raise ValueError(f"rotate_basis must be 'V', 'U' or 'none', got {basis!r}")
    hp = {"block_size": int(cfg["block_size"]), "max_angle": cfg.get("max_rotation_angle"),
          "rotate_U": basis == "V", "rotate_V": basis == "U"}
    if basis == "V":
        params["T_U"] = -state["T"].to(DTYPE)
    elif basis == "U":
        params["T_V"] = -state["T"].to(DTYPE)
    return params, hp
