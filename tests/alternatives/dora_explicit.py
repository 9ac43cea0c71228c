"""DoRA written as the paper writes it: the adapted weight is formed explicitly, then applied.

    V = W + s·B A,   W' = m ⊙ V / ‖V‖_row,   y = x W'ᵀ + b      (s = alpha / r, or alpha / √r)

(Liu et al., arXiv 2402.09353, §4.1 eq. 5.) ‖V‖_row is detached, as §4.3 recommends (it is a
constant in backprop; values unchanged). The base output y is not used: the layer is recomputed
with W'. W' is formed in the adapter dtype and cast to the layer's dtype before F.linear, i.e. the
layer runs with its merged weight, as a merge would leave it (free choice; at init m/‖W‖ is
exactly 1, so W' = W bit for bit and the identity is exact in every dtype). The bias is not scaled.
Init: m = ‖W‖_row computed in the adapter dtype with torch.linalg.vector_norm, A ~ U(±1/√d_in)
(torch.nn.init.kaiming_uniform_(a=√5) with the runtime's generator: other draws than ours), B = 0.

    python -m audit run --impl tests/alternatives/dora_explicit.py:DoraExplicit --card dora
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from variants import ParamSpec, Variant
from variants.dora import DoraConfig
from _dense import weight_of


class DoraExplicit(Variant):
    name = "dora"
    Config = DoraConfig
    needs_dense_weight = True

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), "m": ParamSpec((d_out,))}

    def init(self, layer, cfg, gen):
        A = layer.adapter_A
        draw = torch.empty(A.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(draw, a=math.sqrt(5), generator=gen)
        A.copy_(draw)
        layer.adapter_B.zero_()
        m = layer.adapter_m
        m.copy_(torch.linalg.vector_norm(weight_of(layer).detach().to(m.dtype), dim=1))

    def _scale(self, r: int) -> float:
        return self.cfg.alpha / math.sqrt(r) if self.cfg.use_rslora else self.cfg.alpha / r

    def merged_weight(self, layer) -> torch.Tensor:
        A, B, m = layer.adapter_A, layer.adapter_B, layer.adapter_m
        V = weight_of(layer).to(A.dtype) + self._scale(A.shape[0]) * (B @ A)
        col = torch.linalg.vector_norm(V, dim=1).detach()  # §4.3: a constant in backprop
        return (m / col).unsqueeze(1) * V

    def forward(self, layer, x, y):
        W_new = self.merged_weight(layer).to(layer.weight.dtype)
        return F.linear(x, W_new, layer.bias).to(y.dtype)
