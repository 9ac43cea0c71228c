"""DoRA with the gradient through the norm, eq. (5) as written: an open choice the audit must accept.

    V = W + s·B A,   W' = m ⊙ V / ‖V‖_row,   y = x W'ᵀ + b      (s = alpha / r, or alpha / √r)

(Liu et al., arXiv 2402.09353, §4.1 eq. 5.) §4.3 treats ‖V‖_row as a constant in backprop to save
memory (peft and ours do); that is optional, so here the norm stays in the graph and A and B get the
fully differentiated gradient. Values are those of every DoRA. The layer output is recomputed from
the adapted weight formed in the adapter dtype; the bias is not scaled. Init: m = ‖W‖_row, A ~ U(±1/√d_in)
(torch's kaiming_uniform_ on the runtime's generator), B = 0. The audit reports the choice as
norm_gradient=through.

    python -m audit run --impl tests/alternatives/dora_through_norm.py:DoraThroughNorm --card dora
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from _dense import weight_of
from variants import ParamSpec, Variant
from variants.dora import DoraConfig


class DoraThroughNorm(Variant):
    name = "dora"
    Config = DoraConfig
    needs_dense_weight = True

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), "m": ParamSpec((d_out,))}

    def init(self, layer, cfg, gen):
        draw = torch.empty(layer.adapter_A.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=gen)
        layer.adapter_A.copy_(draw)
        layer.adapter_B.zero_()
        m = layer.adapter_m
        # the forward's own norm at B = 0, so m / ‖V‖ = 1 exactly at init
        m.copy_(torch.linalg.vector_norm(weight_of(layer).detach().to(m.dtype), dim=1))

    def forward(self, layer, x, y):
        A, B, m = layer.adapter_A, layer.adapter_B, layer.adapter_m
        r = A.shape[0]
        s = self.cfg.alpha / math.sqrt(r) if self.cfg.use_rslora else self.cfg.alpha / r
        V = weight_of(layer).to(A.dtype) + s * (B @ A)
        W_new = (m / torch.linalg.vector_norm(V, dim=1)).unsqueeze(1) * V  # the norm stays in the graph
        return F.linear(x, W_new.to(x.dtype), layer.bias).to(y.dtype)
