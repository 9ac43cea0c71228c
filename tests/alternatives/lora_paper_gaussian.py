"""LoRA initialised as the paper says: "random Gaussian initialization for A and zero for B" (§4.1).

    y = x Wᵀ + b + s · (x Aᵀ) Bᵀ,   s = alpha / r  (alpha / √r with use_rslora)

The paper gives no variance; this one takes σ = 1/√d_in (the scale of a layer's own weights), drawn
by the runtime's generator. peft and ours draw A kaiming-uniform instead: an open choice the audit
must accept, and report as A_draw=gaussian. The delta is computed in the adapter dtype and rounded
to the output dtype before it is added.

    python -m audit run --impl tests/alternatives/lora_paper_gaussian.py:LoraPaperGaussian --card lora
"""
from __future__ import annotations

import math

import torch

from variants import ParamSpec, Variant
from variants.lora import LoraConfig


class LoraPaperGaussian(Variant):
    name = "lora"
    Config = LoraConfig

    def param_specs(self, d_in, d_out, r, cfg):
        bias = {"b_B": ParamSpec((d_out,))} if cfg.lora_bias else {}  # peft's lora_bias: B's own bias
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), **bias}

    def init(self, layer, cfg, gen):
        A = layer.adapter_A
        draw = torch.randn(A.shape, generator=gen, dtype=torch.float32) / math.sqrt(A.shape[1])
        A.copy_(draw)
        layer.adapter_B.zero_()
        if cfg.lora_bias:
            layer.adapter_b_B.zero_()

    def forward(self, layer, x, y):
        A, B = layer.adapter_A, layer.adapter_B
        r = A.shape[0]
        s = self.cfg.alpha / math.sqrt(r) if self.cfg.use_rslora else self.cfg.alpha / r
        bias = layer.adapter_b_B if self.cfg.lora_bias else 0.0
        return y + (s * ((x.to(A.dtype) @ A.T) @ B.T + bias)).to(y.dtype)
