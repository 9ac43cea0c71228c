"""LoHa initialised as the LyCORIS authors' code does: w2_a = 0 and Gaussian draws for the rest.

    ΔW = s · (w1_a w1_b) ⊙ (w2_a w2_b),   s = alpha / r,   y = x (W + ΔW)ᵀ + b

w1_a ~ N(0, 0.1²), w1_b ~ N(0, 1), w2_b ~ N(0, 1), w2_a = 0 (LyCORIS lycoris/modules/loha.py), drawn by
the runtime's generator. peft and ours zero w2_b instead and draw the others kaiming-uniform: which
factor is zero and the family of the others are open choices the audit must accept (any zero factor
keeps ΔW = 0), reported as zero_factor=w2_a; factor_draw=gaussian. The forward forms ΔW in the adapter
dtype and adds x ΔWᵀ rounded to the output dtype.

    python -m audit run --impl tests/alternatives/loha_lycoris_init.py:LohaLycorisInit --card loha
"""
from __future__ import annotations

import torch

from variants import ParamSpec, Variant
from variants.loha import LohaConfig


class LohaLycorisInit(Variant):
    name = "loha"
    Config = LohaConfig

    def param_specs(self, d_in, d_out, r, cfg):
        return {"w1_a": ParamSpec((d_out, r)), "w1_b": ParamSpec((r, d_in)),
                "w2_a": ParamSpec((d_out, r)), "w2_b": ParamSpec((r, d_in))}

    def init(self, layer, cfg, gen):
        for name, std in (("w1_a", 0.1), ("w1_b", 1.0), ("w2_b", 1.0)):
            t = getattr(layer, f"adapter_{name}")
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32) * std)
        layer.adapter_w2_a.zero_()

    def forward(self, layer, x, y):
        w1_a, w1_b, w2_a, w2_b = (getattr(layer, f"adapter_{n}") for n in ("w1_a", "w1_b", "w2_a", "w2_b"))
        s = self.cfg.alpha / w1_a.shape[1]
        delta_w = s * ((w1_a @ w1_b) * (w2_a @ w2_b))
        return y + (x.to(delta_w.dtype) @ delta_w.T).to(y.dtype)
