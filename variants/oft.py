"""OFT, Orthogonal Finetuning (Qiu et al., arXiv 2306.07280, §3-4; OFTv2 arXiv 2506.19847, §3).

    W' = W Rᵀ, b unchanged, i.e. y = (x R) Wᵀ + b      (the paper's W_p' = R W_p⁰ with W_p = Wᵀ)
    R = blockdiag(R_1..R_n), n = d_in / b,  R_i = (I + Q_i)(I − Q_i)⁻¹   (Cayley, paper eq. 4)
    Q_i skew-symmetric: Q_i[rows, cols] = Q[i], Q_i ← Q_i − Q_iᵀ, rows, cols = triu_indices(b, b, 1)

R acts on the input (an input pre-hook: x_blk ← x_blk R_i, peft's OFTRotationModule orientation).
``use_cayley_neumann`` replaces the inverse by OFTv2's truncated Neumann series (t = num_neumann_terms):
R_i ≈ (I + Q_i) Σ_{k=0}^{t−2} Q_i^k = I + 2Q + … + 2Q^{t−2} + Q^{t−1} (peft ≥ 0.18's coefficients for t ≥ 4);
it equals C_i (I − Q_i^{t−1}) with C_i the exact Cayley rotation, so it is orthogonal only up to ‖Q_i‖^{t−1}
(t = 5: singular values 1 − θ⁴, a contraction) and needs ‖Q_i‖ < 1.
Init Q = 0: R = I exactly (both branches); every entry of Q gets a gradient at step 0 (dR = 2 dQ).
OFT has no rank and no scale: the common fields ``r`` and ``alpha`` are not read (peft's ``r`` is the
number of blocks, here d_in / block_size per layer). A block size that does not divide a target's d_in
is refused naming ``block_size`` (peft silently picks a nearby divisor).
``block_share`` (peft's option): one block R_0 = Cayley(Q_0) on every diagonal position, Q (1, b(b−1)/2).
``coft`` (constrained OFT, paper §3): before each forward, each skew block is projected into the radius
‖Q_i‖_F ≤ eps/√n (n = rows of Q; peft's statement of the radius), written back into Q as peft does: a
projection between optimiser steps (projected gradient descent), the gradient unchanged by it.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is


@dataclass(frozen=True)
class OftConfig(AdapterConfig):
    """block_size b (must divide every target's d_in), use_cayley_neumann, num_neumann_terms t (≥ 2)."""

    variant = "oft"
    unused = ("r", "alpha")  # block_size sets the size
    extensions = ("block_share", "coft", "eps")
    block_size: int = 16
    block_share: bool = False
    coft: bool = False
    eps: float = 6e-5
    use_cayley_neumann: bool = False
    num_neumann_terms: int = 5

    def check(self):
        if self.block_size < 2:
            raise self.fail("block_size", f"must be >= 2 (a 1×1 block has no rotation), got {self.block_size}")
        if self.num_neumann_terms < 2:
            raise self.fail("num_neumann_terms", f"must be >= 2, got {self.num_neumann_terms}")
        if not self.eps > 0:
            raise self.fail("eps", f"COFT's radius must be > 0, got {self.eps}")


@functools.lru_cache(maxsize=16)
def _triu(b: int, device: torch.device) -> torch.Tensor:
    """torch.triu_indices(b, b, 1), made once per (b, device): the backward of every forward keeps it."""
    return torch.triu_indices(b, b, 1, device=device)


def skew_blocks(q: torch.Tensor, block_size: int) -> torch.Tensor:
    """(n, b, b) skew-symmetric blocks from q (n, b(b−1)/2), the strict upper triangle row by row."""
    b = block_size
    rows, cols = _triu(b, q.device)
    m = q.new_zeros(q.shape[0], b, b)
    m[:, rows, cols] = q  # written into one fresh tensor: no second (n, b, b) buffer
    return m - m.transpose(-1, -2)


def rotation_blocks(q: torch.Tensor, cfg: OftConfig) -> torch.Tensor:
    """(n, b, b) blocks R_i, computed in float32 at least (no bf16 solve kernel; §3 eq. 4)."""
    dt = torch.promote_types(q.dtype, torch.float32)
    s = skew_blocks(q.to(dt), cfg.block_size)
    eye = torch.eye(cfg.block_size, dtype=dt, device=q.device)
    if not cfg.use_cayley_neumann:
        return torch.linalg.solve(eye - s, eye + s, left=False)  # X (I − Q) = I + Q
    # (I + Q) Σ_{k≤t−2} Q^k expanded: I + 2Q + … + 2Q^{t−2} + Q^{t−1}; summed term by term, so backward
    # keeps only the powers (each product's inputs), not the partial sums and a final product's operands
    t = cfg.num_neumann_terms
    if t == 2:
        return eye + s
    rot, power = eye.repeat(s.shape[0], 1, 1).add_(s, alpha=2), s  # one buffer, accumulated in place
    for _ in range(2, t - 1):
        power = power @ s
        rot.add_(power, alpha=2)
    return rot.add_(power @ s)


def _coft_project_(q: torch.Tensor, eps: float) -> None:
    """COFT: scale each row q_i whose skew block is outside ‖Q_i‖_F ≤ eps/√n back onto that radius, in place
    and outside autograd (only when one is outside by more than rounding, so a projected Q is left alone)."""
    with torch.no_grad():
        rho = eps / math.sqrt(q.shape[0])
        norm = math.sqrt(2.0) * q.double().norm(dim=1, keepdim=True)
        outside = norm > rho * (1 + 4 * torch.finfo(q.dtype).eps)
        if bool(outside.any()):
            q.copy_(torch.where(outside, q.double() * (rho / norm), q.double()).to(q.dtype))


def _peft_oft_fields(pcfg, shapes) -> dict:
    """The block size from the stored skew parameters (b(b−1)/2 per block): peft sets it by
    oft_block_size or by r = d_in / b, and one config here has one b. A config without
    use_cayley_neumann predates it: the exact Cayley transform."""
    sizes = {m: round((1 + math.sqrt(1 + 8 * sh["Q"][1])) / 2) for m, sh in shapes.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"this peft OFT adapter has several block sizes {sorted(set(sizes.values()))}; one config "
                         "here has one block_size")
    return {"block_size": next(iter(sizes.values())), "use_cayley_neumann": bool(pcfg.get("use_cayley_neumann", False)),
            "num_neumann_terms": int(pcfg.get("num_cayley_neumann_terms", 5)),
            "block_share": bool(pcfg.get("block_share", False)), "coft": bool(pcfg.get("coft", False)),
            "eps": float(pcfg.get("eps", 6e-5))}


class Oft(Variant):
    name = "oft"
    Config = OftConfig
    # peft's OFTConfig (≥ 0.15 layout): oft_R.weight (d_in/b, b(b−1)/2), the skew parameters as our Q
    # and peft's exact branch (use_cayley_neumann=False) computes (I − Q)(I + Q)⁻¹ = R(−Q), the transpose of the
    # paper's R (reports/oft.md): that branch stores −Q, so peft's function is ours both ways
    peft_format = PeftFormat(
        peft_type="OFT", tensors={"Q": "oft_R.weight"}, claims=peft_type_is("OFT"),
        transforms=lambda cfg: {} if cfg.use_cayley_neumann else {"Q": "negate"},
        # peft_version: the first release whose Neumann coefficients are ours (older ones: 2 on every term)
        to_config=lambda cfg, st: {"peft_version": "0.18.0", "r": 0, "oft_block_size": cfg.block_size, "use_cayley_neumann": cfg.use_cayley_neumann,
                                   "num_cayley_neumann_terms": cfg.num_neumann_terms, "coft": cfg.coft,
                                   "eps": cfg.eps, "block_share": cfg.block_share, "module_dropout": 0.0, "init_weights": True,
                                   "bias": "none"},
        from_config=lambda pcfg, shapes: _peft_oft_fields(pcfg, shapes),
        reads=("r", "oft_block_size", "use_cayley_neumann", "num_cayley_neumann_terms", "block_share", "coft", "eps"),
        fixed={"bias": ("none",)},
        inert=("init_weights",), training_only=("module_dropout",))
    hook = "input"

    def param_specs(self, d_in, d_out, r, cfg):
        b = cfg.block_size
        return {"Q": ParamSpec((1 if cfg.block_share else d_in // b, b * (b - 1) // 2))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if d_in % cfg.block_size:
            raise ValueError(f"OftConfig.block_size: {cfg.block_size} does not divide d_in={d_in} of module "
                             f"{name!r}; choose a divisor of every target's input width")

    def init(self, layer, cfg, gen):
        layer.adapter_Q.zero_()

    def forward_input(self, layer, x):
        q = layer.adapter_Q
        if self.cfg.coft:
            _coft_project_(q, self.cfg.eps)
        rot = rotation_blocks(q, self.cfg)
        b = self.cfg.block_size
        n = x.shape[-1] // b
        rot = rot.expand(n, b, b)  # block_share: the one block on every diagonal position (a view)
        h = x.to(rot.dtype).reshape(*x.shape[:-1], n, b)
        return torch.einsum("...nk,nkc->...nc", h, rot).reshape(x.shape).to(x.dtype)
