"""LoKr factorising each dimension as 2 × d/2, where LyCORIS takes the divisor pair nearest √d.

    ΔW = γ·(W₁ ⊗ W₂),   W₁ (2, 2),   W₂ = W₂ₐ W₂ᵦ (d_out/2 × r)(r × d_in/2),   γ = alpha / r

Which divisor pairs factor d_out = p·q and d_in = s·t, and which side is low rank, is an implementation's
rule (LyCORIS: near √d, W₂ low rank when r < max(q, t)/2); the method is any Kronecker product of that
shape (Yeh et al., arXiv 2309.14859 §3). Here p = s = 2 (every zoo width is even): a 2 × 2 grid of large
low-rank blocks. Init as LyCORIS: W₂ᵦ = 0, the rest kaiming-uniform on the runtime's generator. The audit
reads the factorisation off the tensors' shapes; peft (LyCORIS's rule) cannot hold it, so the subject is
judged against the paper alone.

    python -m audit run --impl tests/alternatives/lokr_other_factorisation.py:LokrOtherFactorisation --card lokr
"""
from __future__ import annotations

import math

import torch

from variants import ParamSpec, Variant
from variants.lokr import LokrConfig


class LokrOtherFactorisation(Variant):
    name = "lokr"
    Config = LokrConfig

    def param_specs(self, d_in, d_out, r, cfg):
        return {"w1": ParamSpec((2, 2)), "w2_a": ParamSpec((d_out // 2, r)), "w2_b": ParamSpec((r, d_in // 2))}

    def init(self, layer, cfg, gen):
        for name in ("w1", "w2_a"):
            t = getattr(layer, f"adapter_{name}")
            draw = torch.empty(t.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=gen)
            t.copy_(draw)
        layer.adapter_w2_b.zero_()

    def forward(self, layer, x, y):
        w2 = layer.adapter_w2_a @ layer.adapter_w2_b
        delta_w = (self.cfg.alpha / self.cfg.r) * torch.kron(layer.adapter_w1, w2)
        return y + (x.to(delta_w.dtype) @ delta_w.T).to(y.dtype)
