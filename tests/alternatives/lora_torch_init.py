"""LoRA written independently: torch's own kaiming initialiser on the global RNG, a plain forward.

    y = x Wᵀ + b + s · (x Aᵀ) Bᵀ,   s = alpha / r  (alpha / √r with use_rslora)

A ~ torch.nn.init.kaiming_uniform_(a=√5) = U(±1/√d_in), the distribution peft and ours use, but
drawn by torch's global CPU generator (forked, so the caller's stream is untouched), seeded from
cfg.seed and the layer's position: other draws than ours. B = 0. The delta is computed out of place
in the adapter dtype and rounded to the output dtype before it is added.

    python -m audit run --impl tests/alternatives/lora_torch_init.py:LoraTorchInit --card lora
"""
from __future__ import annotations

import math

import torch

from variants import ParamSpec, Variant
from variants.lora import LoraConfig


class LoraTorchInit(Variant):
    name = "lora"
    Config = LoraConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self._layers_seen = 0

    def param_specs(self, d_in, d_out, r, cfg):
        bias = {"b_B": ParamSpec((d_out,))} if cfg.lora_bias else {}  # peft's lora_bias: B's own bias
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), **bias}

    def init(self, layer, cfg, gen):
        A, B = layer.adapter_A, layer.adapter_B
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1_000_003 * cfg.seed + 7919 * self._layers_seen + 17)
            draw = torch.empty(A.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(draw, a=math.sqrt(5))
        self._layers_seen += 1
        A.copy_(draw)
        B.zero_()
        if cfg.lora_bias:
            layer.adapter_b_B.zero_()

    def forward(self, layer, x, y):
        A, B = layer.adapter_A, layer.adapter_B
        r = A.shape[0]
        s = self.cfg.alpha / math.sqrt(r) if self.cfg.use_rslora else self.cfg.alpha / r
        xa = x.to(A.dtype)
        delta = s * (xa @ A.T) @ B.T
        if self.cfg.lora_bias:
            delta = delta + s * layer.adapter_b_B
        return y + delta.to(y.dtype)
