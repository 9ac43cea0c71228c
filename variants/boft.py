"""BOFT, Orthogonal Butterfly (Liu et al., arXiv 2311.06243, §4; ICLR 2024).

    W' = W Rᵀ, b unchanged, i.e. y = (x R) Wᵀ + b     (the paper's z = (R W⁰)ᵀ x with W⁰ = Wᵀ)
    R = B̃(d, 2^m) ⋯ B̃(d, 4) B̃(d, 2)                   (§4 forward pass; App. F eq. 3)
    B̃(d, k): d/b rotations C = (I + Q)(I − Q)⁻¹ (b×b, Cayley, §3), rotation i = c·k/2 + j acting on the
    coordinates [sub-block j ; sub-block j + k/2] of chunk c (sub-blocks of b/2, chunks of k·b/2; eq. 1's
    butterfly factor pairs t with t + k/2). k = 2 is OFT's block-diagonal R.

R acts on the input (an input pre-hook), row form x ↦ x R = x B̃(d, 2^m) ⋯ B̃(d, 2): the widest component
first. Each component is a reshape that gathers every rotation's coordinates into one contiguous block
(…, C, 2, k/2, b/2) → (…, C, k/2, 2, b/2) = (…, d/b, b), one batched product, and the inverse reshape: no
d × d matrix is formed. Q (m, d/b, b(b−1)/2) packs each skew block's strict upper triangle, row-major; Q[ℓ]
is component B̃(d, 2^{ℓ+1}). Init Q = 0 (§4 'identity initialization'): R = I exactly.
The block size is ``block_size`` or d_in / ``block_num`` (exactly one set; §6.3 counts blocks); a size that
does not fit a target (b ∤ d_in, or for m > 1 an odd b or b·2^{m−1} ∤ d_in) is refused naming the field.
The paper's multiplicative dropout (§4) acts in training only and is not implemented (p = 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is
from .oft import skew_blocks


@dataclass(frozen=True)
class BoftConfig(AdapterConfig):
    """block_size b or block_num (exactly one > 0), n_butterfly_factor m ≥ 1 (m = 1: OFT)."""

    variant = "boft"
    unused = ("r", "alpha")  # the block size and the number of factors set the size
    block_size: int = 8
    block_num: int = 0
    n_butterfly_factor: int = 1

    def check(self):
        if (self.block_size > 0) == (self.block_num > 0):
            raise self.fail("block_size", f"set exactly one of block_size ({self.block_size}) and block_num "
                                          f"({self.block_num}) > 0")
        if self.block_size == 1:
            raise self.fail("block_size", "must be >= 2 (a 1×1 block has no rotation)")
        if self.block_size < 0 or self.block_num < 0:
            raise self.fail("block_size" if self.block_size < 0 else "block_num", "must be >= 0")
        if self.n_butterfly_factor < 1:
            raise self.fail("n_butterfly_factor", f"must be >= 1, got {self.n_butterfly_factor}")

    def size(self, d_in: int) -> int:
        return self.block_size or d_in // self.block_num


def rotations(q: torch.Tensor, b: int) -> torch.Tensor:
    """(…, n, b, b) Cayley blocks (I + Q)(I − Q)⁻¹ (§3) of q (…, n, b(b−1)/2), in float32 at least."""
    dt = torch.promote_types(q.dtype, torch.float32)
    s = skew_blocks(q.to(dt).reshape(-1, q.shape[-1]), b)
    eye = torch.eye(b, dtype=dt, device=q.device)
    return torch.linalg.solve(eye - s, eye + s, left=False).reshape(*q.shape[:-1], b, b)  # X(I − Q) = I + Q


def apply_component(h: torch.Tensor, rot: torch.Tensor, level: int) -> torch.Tensor:
    """h B̃(d, 2^{level+1}) for rows h (…, d): gather each rotation's [sub-block j ; sub-block j + k/2], rotate
    (row times block), scatter back."""
    n, b = rot.shape[0], rot.shape[-1]
    if level == 0:
        g = h.reshape(*h.shape[:-1], n, b)
        return torch.einsum("...nk,nkc->...nc", g, rot).reshape(h.shape)
    half = 2 ** level  # k/2
    lead = h.shape[:-1]
    g = h.reshape(*lead, -1, 2, half, b // 2).transpose(-3, -2).reshape(*lead, n, b)
    g = torch.einsum("...nk,nkc->...nc", g, rot)
    return g.reshape(*lead, -1, half, 2, b // 2).transpose(-3, -2).reshape(h.shape)


def _peft_boft_fields(pcfg, shapes) -> dict:
    """Our fields from a peft BOFT file: the block size and the factor count from boft_R (m, d/b, b, b)."""
    sizes = {(sh["Q"][0], sh["Q"][-1]) for sh in shapes.values()}
    if len(sizes) != 1:
        raise ValueError(f"this peft BOFT adapter has several (factors, block size) pairs {sorted(sizes)}; one "
                         "config here has one block_size")
    m, b = sizes.pop()
    return {"block_size": int(b), "block_num": 0, "n_butterfly_factor": int(m)}


class Boft(Variant):
    name = "boft"
    Config = BoftConfig
    # peft's BOFTConfig: boft_R (m, d/b, b, b) full blocks whose skew part 0.5(B − Bᵀ) = S enters
    # (I − S)(I + S)⁻¹ = C(−S) (layer.py cayley_batch): our Q is stored as the skew blocks of −Q, so peft
    # computes ours. peft also scales each output by a trainable boft_s (d_out, 1), init 1, the paper has not:
    # saved files here hold none (peft's init 1 fills it in); a file with boft_s is refused (load_peft).
    peft_format = PeftFormat(
        peft_type="BOFT", tensors={"Q": "boft_R"}, claims=peft_type_is("BOFT"),
        transforms={"Q": "negated skew blocks"},
        to_config=lambda cfg, st: {"boft_block_size": cfg.block_size, "boft_block_num": cfg.block_num,
                                   "boft_n_butterfly_factor": cfg.n_butterfly_factor, "boft_dropout": 0.0,
                                   "init_weights": True, "bias": "none"},
        from_config=lambda pcfg, shapes: _peft_boft_fields(pcfg, shapes),
        reads=("boft_block_size", "boft_block_num", "boft_n_butterfly_factor"),
        fixed={"bias": ("none",)},
        inert=("init_weights",), training_only=("boft_dropout",))
    hook = "input"

    def param_specs(self, d_in, d_out, r, cfg):
        b = cfg.size(d_in)
        return {"Q": ParamSpec((cfg.n_butterfly_factor, d_in // b, b * (b - 1) // 2))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        field = "block_size" if cfg.block_size else "block_num"
        if cfg.block_num and d_in % cfg.block_num:
            raise ValueError(f"BoftConfig.block_num: {cfg.block_num} does not divide d_in={d_in} of module {name!r}")
        b, m = cfg.size(d_in), cfg.n_butterfly_factor
        if b < 2 or d_in % b:
            raise ValueError(f"BoftConfig.{field}: block size {b} does not divide d_in={d_in} of module {name!r} "
                             "(or is < 2); choose a divisor of every target's input width")
        if m > 1 and (b % 2 or d_in % (b * 2 ** (m - 1))):
            raise ValueError(f"BoftConfig.n_butterfly_factor: m={m} needs an even block size (b={b}) with "
                             f"b·2^(m−1) = {b * 2 ** (m - 1)} dividing d_in={d_in} of module {name!r}")

    def init(self, layer, cfg, gen):
        layer.adapter_Q.zero_()

    def forward_input(self, layer, x):
        q = layer.adapter_Q
        b = math.isqrt(2 * q.shape[-1]) + 1  # b(b−1)/2 packed entries
        rot = rotations(q, b)
        h = x.to(rot.dtype)
        for level in range(q.shape[0] - 1, -1, -1):  # x R = x B̃(d, 2^m) ⋯ B̃(d, 2): widest first
            h = apply_component(h, rot[level], level)
        return h.to(x.dtype)
