"""C3A, circular convolution adaptation (Chen et al., arXiv 2407.19342, §3.2-3.4).

    ΔW = (1/d_in)·C_blk(w),   C_blk(w) = [C(w_ij)] (d_out/b × d_in/b blocks of b × b),
    C(v)[l, k] = v[(k − l) mod b]  (row l: v cyclically shifted right l times; first row v),   h = W₀x + ΔW x

Each block applies a circular correlation, computed with real FFTs of length b: with X = rfft(x_j),
V = rfft(w_ij), C(w_ij) x_j = irfft(conj(V) ⊙ X). ``kernel`` (d_out/b, d_in/b, b) is the only trainable tensor;
the 1/d_in factor is peft's (the authors' integration of C3A into peft). b must divide both d_in and d_out.

The backward is written out too (``BlockCirculant``): it keeps only x and the kernel, as peft's does, and
recomputes the transforms: ∂L/∂x_j = Σ_i C(w_ij)ᵀ g_i = irfft(Σ_i V_ij ⊙ G_i) (a circular convolution: the
transpose of a correlation) and ∂L/∂w_ij = Σ_tokens irfft(conj(G_i) ⊙ X_j).
Init (open in the paper): peft's options, "xavier_uniform" (its default) U(±√(6/(d_in + d_out))),
"kaiming_uniform" U(±√(1/d_in)), "gaussian" N(0, 1), or "zeros" (the identity at init).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is
from ._tensor_init import normal_, uniform_


@dataclass(frozen=True)
class C3AConfig(AdapterConfig):
    """block_size b (must divide every target's d_in and d_out), init_weights (the kernel's init).
    r and alpha are not read."""

    variant = "c3a"
    unused = ("r", "alpha")
    block_size: int = 256
    init_weights: Literal["xavier_uniform", "kaiming_uniform", "gaussian", "zeros"] = "xavier_uniform"

    def check(self):
        if self.block_size < 1:
            raise self.fail("block_size", f"must be a positive integer, got {self.block_size}")


def _spectra(t: torch.Tensor, b: int) -> torch.Tensor:
    return torch.fft.rfft(t.unflatten(-1, (-1, b)), dim=-1)  # (..., blocks, b//2 + 1)


def _mix(a: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Σ_j a[..., j, f] k[i, j, f] for every frequency f: one batched complex matmul over f. a (T, J, F),
    k (I, J, F) -> (T, I, F)."""
    return torch.bmm(a.permute(2, 0, 1), k.permute(2, 1, 0)).permute(1, 2, 0)


class BlockCirculant(torch.autograd.Function):
    """y = C_blk(w) x over the last dim of x (T, d_in) -> (T, d_out), w (d_out/b, d_in/b, b)."""

    @staticmethod
    def forward(ctx, x, w):
        b = w.shape[-1]
        ctx.save_for_backward(x, w)
        out = _mix(_spectra(x, b), torch.fft.rfft(w, dim=-1).conj())
        return torch.fft.irfft(out, n=b, dim=-1).flatten(-2)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        b = w.shape[-1]
        gs = _spectra(g, b)  # (T, d_out/b, F)
        gx = gw = None
        if ctx.needs_input_grad[0]:  # Σ_i C(w_ij)ᵀ g_i: the circular convolution with w_ij
            gx = torch.fft.irfft(_mix(gs, torch.fft.rfft(w, dim=-1).transpose(0, 1)), n=b, dim=-1).flatten(-2)
        if ctx.needs_input_grad[1]:  # Σ_T g_i ⋆ x_j (correlation): irfft(conj(G_i) X_j) summed over tokens
            xs = _spectra(x, b)  # (T, d_in/b, F)
            z = torch.bmm(gs.conj().permute(2, 1, 0), xs.permute(2, 0, 1))  # (F, d_out/b, d_in/b)
            gw = torch.fft.irfft(z.permute(1, 2, 0), n=b, dim=-1)
        return gx, gw


def dense_delta(w: torch.Tensor, d_in: int) -> torch.Tensor:
    """ΔW = C_blk(w)/d_in as a dense (d_out, d_in) matrix: ΔW[i·b + l, j·b + k] = w[i, j, (k − l) mod b]/d_in."""
    m, n, b = w.shape
    idx = (torch.arange(b, device=w.device)[None, :] - torch.arange(b, device=w.device)[:, None]) % b  # [l, k]
    return (w[:, :, idx] / d_in).permute(0, 2, 1, 3).reshape(m * b, n * b)


class C3A(Variant):
    name = "c3a"
    Config = C3AConfig
    # peft's C3AConfig: c3a_kernel (d_out/b, d_in/b, b) per layer, the same layout as ours
    peft_format = PeftFormat(
        peft_type="C3A", claims=peft_type_is("C3A"), tensors={"kernel": "c3a_kernel"},
        to_config=lambda cfg, st: {"block_size": cfg.block_size, "block_size_pattern": {}, "bias": "none",
                                   "init_weights": True if cfg.init_weights == "zeros" else cfg.init_weights},
        from_config=lambda pcfg, shapes: {"block_size": int(pcfg.get("block_size", 256)),
                                          "init_weights": _our_init(pcfg.get("init_weights", "xavier_uniform"))},
        reads=("block_size", "init_weights"), fixed={"bias": ("none",), "block_size_pattern": ({}, None)})

    def param_specs(self, d_in, d_out, r, cfg):
        b = cfg.block_size
        return {"kernel": ParamSpec((d_out // b, d_in // b, b))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        b = cfg.block_size
        if d_in % b or d_out % b:
            raise ValueError(f"{type(cfg).__name__}.block_size: block_size={b} must divide both d_in={d_in} and "
                             f"d_out={d_out} of module {name!r} (the blocks of ΔW are b × b circulants)")

    def init(self, layer, cfg, gen):
        w = layer.adapter_kernel
        m, n, b = w.shape
        d_out, d_in = m * b, n * b
        if cfg.init_weights == "zeros":
            w.zero_()
        elif cfg.init_weights == "gaussian":
            normal_(w, 1.0, gen)
        elif cfg.init_weights == "kaiming_uniform":
            uniform_(w, math.sqrt(1.0 / d_in), gen)
        else:
            uniform_(w, math.sqrt(6.0 / (d_in + d_out)), gen)

    def forward(self, layer, x, y):
        w = layer.adapter_kernel
        dt = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32  # no bf16 FFT
        d_in = x.shape[-1]
        h = BlockCirculant.apply(x.reshape(-1, d_in).to(dt), w.to(dt) / d_in)
        return y + h.view(y.shape).to(y.dtype)

    def merged_weights(self, layer):
        w = layer.adapter_kernel
        base = self.weight(layer)
        delta = dense_delta(w.detach().to(torch.float64), base.shape[1])
        return (base.to(torch.float64) + delta).to(base.dtype), None if layer.bias is None else layer.bias.detach()


def _our_init(value) -> str:
    """peft's init_weights value as ours: True -> zeros, False -> xavier_uniform (peft's own reading)."""
    if value is True:
        return "zeros"
    if value is False:
        return "xavier_uniform"
    return str(value)
