"""BOFT (Orthogonal Butterfly) paper formula (float64), built as dense matrices from the paper's definitions."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear
from .oft import skew

EQUATION = ("W′ = W Rᵀ (z = (R W⁰)ᵀ x, y = (xR)Wᵀ + b),  R(m, b/2) = B̃(d, 2^m) ⋯ B̃(d, 4) B̃(d, 2),  each B̃ a "
            "block-permuted block-diagonal of b×b Cayley rotations (I + Q)(I − Q)⁻¹, Q = −Qᵀ;  Q = 0 at init")
CITATION = (
    "Liu, Qiu, Feng, Xiu, Xue, Yu, Feng, Liu, Heo, Peng, Wen, Black, Weller, Schölkopf, Parameter-Efficient "
    "Orthogonal Finetuning via Butterfly Factorization, ICLR 2024, arXiv:2311.06243: §3 (OFT: z = (RW⁰)ᵀx, Cayley "
    "R = (I + Q)(I − Q)⁻¹), §4 eq. 1 (butterfly factor BF(k)), eq. 2 (B(d) = B̃(d, d)⋯B̃(d, 2)), the forward "
    "pass R(m, b) = Π_{i=1}^m B̃_b(d, 2^{m−i+1}) and BOFT(m, b) := R(m, b/2); App. F eq. 3 (the same product "
    "written out); §4 'identity initialization' (Q = 0)"
)


def block_size(cfg: dict, d_in: int) -> int:
    """b: ``block_size``, or d_in / ``block_num`` (§6.3 counts blocks r = d/b instead); exactly one is set."""
    bs, bn = int(cfg.get("block_size", 0) or 0), int(cfg.get("block_num", 0) or 0)
    if (bs > 0) == (bn > 0):
        raise ValueError(f"exactly one of block_size ({bs}) and block_num ({bn}) must be positive")
    if bn and d_in % bn:
        raise ValueError(f"block_num {bn} does not divide d_in={d_in}")
    return bs or d_in // bn


def n_factors(cfg: dict) -> int:
    m = int(cfg.get("n_butterfly_factor", 1))
    if m < 1:
        raise ValueError(f"n_butterfly_factor must be >= 1, got {m}")
    return m


def check_shape(d_in: int, cfg: dict) -> tuple[int, int]:
    """(b, m) after the paper's constraints: b | d_in; for m > 1 the half-block b/2 is the butterfly's entry
    (BOFT(m, b) uses R(m, b/2), so b even) and the widest factor B̃(d, 2^m) spans b·2^{m−1} | d_in."""
    b, m = block_size(cfg, d_in), n_factors(cfg)
    if b < 2 or d_in % b:
        raise ValueError(f"block size {b} must be >= 2 and divide d_in={d_in}")
    if m > 1 and (b % 2 or d_in % (b * 2 ** (m - 1))):
        raise ValueError(f"m={m} needs an even block size b={b} with b·2^(m−1) dividing d_in={d_in}")
    return b, m


def block_indices(d_in: int, b: int, level: int) -> torch.Tensor:
    """(d_in/b, b): the coordinates the i-th b×b rotation of butterfly component B̃(d, k), k = 2^{level+1},
    couples. §4 eq. 1: BF(k) = [[diag(d1), diag(d2)], [diag(d3), diag(d4)]] links entry t of its first half with
    entry t + k/2 of its second half; in the block version each entry is a (b/2)×(b/2) block, so rotation
    i = c·k/2 + j (chunk c of k·b/2 coordinates, pair j < k/2) acts on [sub-block j ; sub-block j + k/2] of
    chunk c, in that order. Level 0 (k = 2): the contiguous blocks of OFT's block-diagonal R."""
    if level == 0:
        return torch.arange(d_in).reshape(-1, b)
    k, h = 2 ** (level + 1), b // 2
    rows = []
    for c in range(d_in // (k * h)):
        for j in range(k // 2):
            lo, hi = c * k * h + j * h, c * k * h + (j + k // 2) * h
            rows.append(torch.cat([torch.arange(lo, lo + h), torch.arange(hi, hi + h)]))
    return torch.stack(rows)


def cayley(q: torch.Tensor, b: int) -> torch.Tensor:
    """(n, b, b) rotations (I + Q_i)(I − Q_i)⁻¹ (§3) from packed skew rows q (n, b(b−1)/2)."""
    s = skew(q, b)
    eye = torch.eye(b, dtype=s.dtype, device=s.device)
    return torch.linalg.solve(eye - s, eye + s)  # (I − Q)⁻¹(I + Q) = (I + Q)(I − Q)⁻¹: they commute


def component(q: torch.Tensor, d_in: int, b: int, level: int) -> torch.Tensor:
    """The dense d_in × d_in butterfly component B̃(d, 2^{level+1}): rotation i placed on the rows and
    columns block_indices(...)[i] (a block-wise permutation of a block-diagonal matrix, §4)."""
    rot = cayley(q, b)
    idx = block_indices(d_in, b, level).to(q.device)
    out = torch.zeros(d_in, d_in, dtype=rot.dtype, device=rot.device)
    rr = idx[:, :, None].expand(-1, b, b)
    cc = idx[:, None, :].expand(-1, b, b)
    return out.index_put((rr.reshape(-1), cc.reshape(-1)), rot.reshape(-1))


def rotation(state: dict, cfg: dict, d_in: int) -> torch.Tensor:
    """R = B̃(d, 2^m) ⋯ B̃(d, 4) B̃(d, 2) (App. F eq. 3): Q[ℓ] parameterises B̃(d, 2^{ℓ+1})."""
    b, m = check_shape(d_in, cfg)
    q = f64(state["Q"])
    if tuple(q.shape) != layout(d_in, 0, cfg)["Q"]:
        raise ValueError(f"Q {tuple(q.shape)} does not fit d_in={d_in} under {cfg}")
    r = torch.eye(d_in, dtype=q.dtype, device=q.device)
    for level in range(m):
        r = component(q[level], d_in, b, level) @ r
    return r


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W Rᵀ, b_eff = b: the paper's z = (R W⁰)ᵀ x with W⁰ = Wᵀ (d × n), i.e. y = (x R) Wᵀ + b.

    state: Q (m, d_in/b, b(b−1)/2), Q[ℓ, i] the strict upper triangle (row-major) of the skew matrix of
    rotation i of component B̃(d, 2^{ℓ+1}). cfg: block_size or block_num, n_butterfly_factor.
    """
    W = f64(W)
    return W @ rotation(state, cfg, W.shape[1]).T, f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """Q (m, d_in/b, b(b−1)/2): ½(b − 1)·d·m effective parameters (§4)."""
    b, m = block_size(cfg, d_in), n_factors(cfg)
    return {"Q": (m, d_in // b, b * (b - 1) // 2)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """§4 'Identity initialization for BOFT': every butterfly component starts at I, the skew matrices at 0."""
    q = state["Q"].detach().to(torch.float64)
    return [InitClaim("Q_max_abs", "exact", "§4: Q = 0 exactly (every B̃ = I)", value=float(q.abs().max()))]
