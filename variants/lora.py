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

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._tensor_init import kaiming_uniform_


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    variant = "lora"
    use_rslora: bool = False


def add_lowrank(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y + h Bᵀ: one fused addmm when dtypes agree, else computed in B's dtype and added in y's."""
    if y.dtype == b.dtype:
        return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), b.t()).view(y.shape)
    return y + (h @ b.t()).to(y.dtype)


def lora_delta(layer, x: torch.Tensor, y: torch.Tensor, s: float) -> torch.Tensor:
    """y + s·(x Aᵀ)Bᵀ in the adapter dtype; s is applied to the rank-r activations (cheapest place)."""
    a, b = layer.adapter_A, layer.adapter_B
    return add_lowrank(y, (x.to(a.dtype) @ a.t()) * s, b)


class Lora(Variant):
    name = "lora"
    Config = LoraConfig

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r))}

    @staticmethod
    def scale(cfg, r):
        return cfg.alpha / math.sqrt(r) if getattr(cfg, "use_rslora", False) else cfg.alpha / r

    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_A, gen)
        layer.adapter_B.zero_()

    def forward(self, layer, x, y):
        return lora_delta(layer, x, y, self.scale(self.cfg, layer.adapter_rank))
