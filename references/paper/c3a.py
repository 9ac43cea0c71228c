"""C3A paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): ``kernel`` (d_out/b, d_in/b, b), the circular
convolution kernels of the b × b blocks of ΔW (block (i, j) built from kernel[i, j]).
"""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, compute_dtype, f64, linear, normal_pit, uniform_pit

EQUATION = ("ΔW = s·C_blk(w): block (i, j) = C(w_ij), C(v)[l, k] = v[(k − l) mod b] (rows the cyclic shifts of v);  "
            "s = 1/d_in (peft) or 1;  h = W₀x + ΔW x,  b unchanged")
CITATION = (
    "Chen, Cheng, Liu, Gao, Tsung, Li, Li, Parameter-Efficient Fine-Tuning via Circular Convolution, arXiv:2407.19342 "
    "(Findings of ACL 2025), §3 (ΔW x = Δw ⋆ x = C(Δw) x with the circulant C(Δw) whose rows are the cyclic shifts "
    "of Δw; block-circular convolution for d_out ≠ d_in: ΔW partitioned into b × b circulant blocks, one kernel "
    "each, b dividing d_in and d_out). The 1/d_in normalisation is that of the authors' integration in peft "
    "(tuners/c3a/layer.py); the kernel's scale is left open (references the option kernel_scale)"
)


def circulant_blocks(w: torch.Tensor) -> torch.Tensor:
    """C_blk(w) (m·b, n·b) from w (m, n, b), written out entry by entry: [i·b + l, j·b + k] = w[i, j, (k − l) mod b]."""
    m, n, b = w.shape
    shift = (torch.arange(b)[None, :] - torch.arange(b)[:, None]) % b  # [l, k] -> (k − l) mod b
    return w[:, :, shift].permute(0, 2, 1, 3).reshape(m * b, n * b)


def scale(d_in: int, cfg: dict) -> float:
    """The kernel's scale: 1/d_in (peft's forward and merge) or 1 (ΔW = C(Δw) as §3 writes it)."""
    return 1.0 / d_in if cfg.get("kernel_scale", "1/d_in") == "1/d_in" else 1.0


def delta(W: torch.Tensor, state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = s·C_blk(w) (d_out, d_in), §3."""
    d_out, d_in = W.shape
    w = f64(state["kernel"])
    if w.dim() != 3 or w.shape[0] * w.shape[2] != d_out or w.shape[1] * w.shape[2] != d_in:
        raise ValueError(f"kernel {tuple(w.shape)} does not tile a ({d_out}, {d_in}) weight into b × b blocks")
    return scale(d_in, cfg) * circulant_blocks(w)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + s·C_blk(w), b_eff = b (arXiv:2407.19342 §3)."""
    return f64(W) + delta(W, state, cfg).to(compute_dtype()), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """kernel (d_out/b, d_in/b, b)."""
    bs = int(cfg.get("block_size", 256))
    return {"kernel": (d_out // bs, d_in // bs, bs)}


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """The kernel's init, by the open choice cfg["init_weights"] (peft's options; the paper does not fix one):
    "zeros" w = 0 exactly (ΔW = 0); "xavier_uniform" U(±√(6/(d_in + d_out))); "kaiming_uniform" U(±√(1/d_in));
    "gaussian" N(0, 1)."""
    w = state["kernel"].detach()
    d_out, d_in = W.shape
    how = cfg.get("init_weights", "xavier_uniform")
    if how == "zeros":
        return [InitClaim("kernel_max_abs", "exact", "w = 0 exactly (ΔW = 0 at init)", value=float(w.abs().max()))]
    if how == "gaussian":
        return [InitClaim("kernel_normal", "distribution", "w ~ N(0, 1)", pit=normal_pit(w, 0.0, 1.0))]
    bound = math.sqrt(1.0 / d_in) if how == "kaiming_uniform" else math.sqrt(6.0 / (d_in + d_out))
    return [InitClaim(f"kernel_{how}", "distribution", f"w ~ U(±{bound:.4g}) ({how}, the layer's fans)",
                      pit=uniform_pit(w, bound))]
