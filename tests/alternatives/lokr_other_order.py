"""LoKr with the other Kronecker order: ΔW = γ·(W₂ ⊗ W₁), the (out_k, in_n) factor as the block grid.

    ΔW = γ·kron(W₂, W₁),   y = x Wᵀ + b + x ΔWᵀ,   W₁ (out_l, in_m), W₂ (out_k, in_n)

kron(W₂, W₁) has the same (out_k·out_l, in_n·in_m) = (d_out, d_in) shape as kron(W₁, W₂): both are
Kronecker factorisations of ΔW (Yeh et al., arXiv 2309.14859 §3), with the grid and the block exchanged.
LyCORIS, peft and ours take W₁ ⊗ W₂; the order is an open choice the audit must accept, reported as
kron_order=w2w1. Factor shapes, low-rank rule, γ (alpha/r, 1 with two full factors) and the init
(W₂ or W₂ᵦ = 0, the rest kaiming-uniform on the runtime's generator) as LyCORIS. ΔW is formed in the
adapter dtype; x ΔWᵀ is rounded to the output dtype before it is added.

    python -m audit run --impl tests/alternatives/lokr_other_order.py:LokrOtherOrder --card lokr
"""
from __future__ import annotations

import math

import torch

from variants import ParamSpec, Variant
from variants.lokr import LokrConfig, factorization


class LokrOtherOrder(Variant):
    name = "lokr"
    Config = LokrConfig

    def param_specs(self, d_in, d_out, r, cfg):
        in_m, in_n = factorization(d_in, cfg.decompose_factor)
        out_l, out_k = factorization(d_out, cfg.decompose_factor)
        w1 = ({"w1": ParamSpec((out_l, in_m))} if not (cfg.decompose_both and r < max(out_l, in_m) / 2)
              else {"w1_a": ParamSpec((out_l, r)), "w1_b": ParamSpec((r, in_m))})
        w2 = ({"w2": ParamSpec((out_k, in_n))} if r >= max(out_k, in_n) / 2
              else {"w2_a": ParamSpec((out_k, r)), "w2_b": ParamSpec((r, in_n))})
        return {**w1, **w2}

    def init(self, layer, cfg, gen):
        names = [n for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b") if hasattr(layer, f"adapter_{n}")]
        zero = "w2" if "w2" in names else "w2_b"
        for n in names:
            t = getattr(layer, f"adapter_{n}")
            if n == zero:
                t.zero_()
            else:
                draw = torch.empty(t.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=gen)
                t.copy_(draw)

    @staticmethod
    def _factor(layer, side: str) -> torch.Tensor:
        if hasattr(layer, f"adapter_{side}"):
            return getattr(layer, f"adapter_{side}")
        return getattr(layer, f"adapter_{side}_a") @ getattr(layer, f"adapter_{side}_b")

    def forward(self, layer, x, y):
        both_full = hasattr(layer, "adapter_w1") and hasattr(layer, "adapter_w2")
        gamma = 1.0 if both_full else self.cfg.alpha / self.cfg.r
        delta_w = gamma * torch.kron(self._factor(layer, "w2"), self._factor(layer, "w1"))
        return y + (x.to(delta_w.dtype) @ delta_w.T).to(y.dtype)
