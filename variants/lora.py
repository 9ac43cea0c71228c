"""LoRA (Hu et al., arXiv 2106.09685, eq. 3) with the rsLoRA scale (Kalajdzievski, arXiv 2312.03732).

    y = x Wᵀ + b + s · (x Aᵀ) Bᵀ,   A (r, d_in), B (d_out, r),   s = alpha / r  (rsLoRA: alpha / √r)

Init (peft's, not the paper's Gaussian A): A ~ kaiming_uniform(a=√5) = U(±1/√d_in), B = 0, so the
layer equals the base exactly at init. At step 0, A's gradient is exactly zero (B = 0).
Deviation from the paper: A's init distribution (uniform, as peft) instead of Gaussian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._inplace import owns_output, recording
from ._tensor_init import kaiming_uniform_


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """use_rslora: s = alpha/√r; dropout: p of the dropout on the adapter branch's input, in training
    only (the LoRA paper's and peft's lora_dropout; 0 = none)."""

    variant = "lora"
    training_only = ("dropout",)
    use_rslora: bool = False
    dropout: float = 0.0

    def check(self):
        if not 0.0 <= self.dropout < 1.0:
            raise self.fail("dropout", f"must be in [0, 1), got {self.dropout}")


def add_lowrank(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """y + h Bᵀ as one fused BLAS call when dtypes agree (else computed in B's dtype, added in y's).

    Given the hooked ``layer``, the product is accumulated into y itself when that is safe
    (``_inplace.owns_output``): addmm_ on the flattened output, or baddbmm_ on a (batch, seq, d)
    output under autograd (y keeps its identity, so no view is modified). Same arithmetic, one
    (tokens × d_out) allocation and copy fewer than the out-of-place addmm.
    """
    if y.dtype != b.dtype:
        return y + (h @ b.t()).to(y.dtype)
    bt = b.t()
    grad = recording(y, h, b)
    if layer is not None and owns_output(layer, y, grad):
        if not grad:
            y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), bt)
            return y
        if y.dim() == 2:
            return y.addmm_(h, bt)
        if y.dim() == 3:
            return y.baddbmm_(h, bt.expand(y.shape[0], *bt.shape))
    return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), bt).view(y.shape)


def lora_delta(layer, x: torch.Tensor, y: torch.Tensor, s: float, dropout: float = 0.0) -> torch.Tensor:
    """y + s·(drop(x) Aᵀ)Bᵀ in the adapter dtype; s is applied to the rank-r activations (cheapest
    place); drop is dropout with p = ``dropout`` while the layer is in training mode."""
    a, b = layer.adapter_A, layer.adapter_B
    if dropout and layer.training:
        x = torch.nn.functional.dropout(x, dropout, training=True)
    return add_lowrank(y, (x.to(a.dtype) @ a.t()) * s, b, layer)


class Lora(Variant):
    name = "lora"
    Config = LoraConfig

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r))}

    @staticmethod
    def scale(cfg, r):
        return cfg.alpha / math.sqrt(r) if getattr(cfg, "use_rslora", False) else cfg.alpha / r

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):  # rank(BA) ≤ min(d_in, d_out): the extra rank-1 terms are redundant
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): the update cannot have a higher rank")

    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_A, gen)
        layer.adapter_B.zero_()

    def forward(self, layer, x, y):
        return lora_delta(layer, x, y, self.scale(self.cfg, layer.adapter_rank), self.cfg.dropout)
