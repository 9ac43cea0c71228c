"""(IA)³ written independently: the scaled layer is applied with its merged weight and bias.

    W' = diag(l) W,   b' = l ⊙ b,   y = x W'ᵀ + b'     (= (x Wᵀ + b) ⊙ l)

(Liu et al., arXiv 2205.05638, §3.3: keys and values rescaled; the bias is scaled too, as peft.)
The base output is not used: the layer is recomputed with W', b' formed in the adapter dtype and cast
to the layer's dtype (a merge). l = 1 at init, so W' = W and b' = b bit for bit: exact identity.

    python -m audit run --impl tests/alternatives/ia3_merged.py:Ia3Merged --card ia3
"""
from __future__ import annotations

import torch.nn.functional as F

from variants import ParamSpec, Variant
from variants.ia3 import Ia3Config
from _dense import weight_of


class Ia3Merged(Variant):
    name = "ia3"
    Config = Ia3Config
    default_roles = ("k", "v")
    needs_dense_weight = True

    def param_specs(self, d_in, d_out, r, cfg):
        return {"l": ParamSpec((d_out,))}

    def init(self, layer, cfg, gen):
        layer.adapter_l.fill_(1.0)

    def forward(self, layer, x, y):
        lv = layer.adapter_l
        W = (lv[:, None] * weight_of(layer).to(lv.dtype)).to(layer.weight.dtype)
        b = None if layer.bias is None else (lv * layer.bias.to(lv.dtype)).to(layer.bias.dtype)
        return F.linear(x, W, b).to(y.dtype)
