"""LoRA written independently: the delta is accumulated onto the base output in (at least) float32
and the sum is rounded once to the output dtype.

    y' = round( y + s · (x Aᵀ) Bᵀ ),   s = alpha / r  (alpha / √r with use_rslora)

Ours rounds the delta to the output dtype and adds it there (two roundings in bf16); here the
base output is upcast (exact), the sum formed in the accumulation dtype (the widest of float32, the
adapter dtype and the output dtype: float64 stays float64) and rounded once. Init: A ~ U(±1/√d_in)
(kaiming_uniform with a = √5, peft's) drawn in float32 with Tensor.uniform_ from the runtime's
seeded generator (other draws than ours), B = 0.

    python -m audit run --impl tests/alternatives/lora_fp32_delta.py:LoraFp32Delta --card lora
"""
from __future__ import annotations

import math

import torch

from variants import ParamSpec, Variant
from variants.lora import LoraConfig


class LoraFp32Delta(Variant):
    name = "lora"
    Config = LoraConfig

    def param_specs(self, d_in, d_out, r, cfg):
        bias = {"b_B": ParamSpec((d_out,))} if cfg.lora_bias else {}  # peft's lora_bias: B's own bias
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), **bias}

    def init(self, layer, cfg, gen):
        d_in = layer.adapter_A.shape[1]
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform(a=√5): gain √(2/6), bound gain·√(3/d_in)
        draw = torch.empty(layer.adapter_A.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
        layer.adapter_A.copy_(draw)
        layer.adapter_B.zero_()
        if cfg.lora_bias:
            layer.adapter_b_B.zero_()

    def forward(self, layer, x, y):
        A, B = layer.adapter_A, layer.adapter_B
        r = A.shape[0]
        s = self.cfg.alpha / (math.sqrt(r) if self.cfg.use_rslora else r)
        acc = torch.promote_types(torch.promote_types(y.dtype, A.dtype), torch.float32)
        out = y.to(acc) + s * (x.to(acc) @ A.T.to(acc)) @ B.T.to(acc)
        if self.cfg.lora_bias:
            out = out + s * layer.adapter_b_B.to(acc)
        return out.to(y.dtype)
