"""(IA)³ output scaling (Liu et al., T-Few, arXiv 2205.05638, §3.3): keys and values rescaled.

    y = (x Wᵀ + b) ⊙ l,   l (d_out) = 1 at init   →   W_eff = diag(l) W,  b_eff = l ⊙ b

Paper placement: k and v projections (the default roles here); the FFN's scaling is the separate
``ia3_ff`` variant (input of the down-projection). Identity at init is exact; l gets a gradient at
step 0. Like the paper and peft, the bias is scaled too. ``r`` and ``alpha`` are unused.
"""
from __future__ import annotations

from dataclasses import dataclass

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._inplace import as_operand, owns_output, recording


@dataclass(frozen=True)
class Ia3Config(AdapterConfig):
    variant = "ia3"
    unused = ("r", "alpha")


class Ia3(Variant):
    name = "ia3"
    Config = Ia3Config
    default_roles = ("k", "v")

    def param_specs(self, d_in, d_out, r, cfg):
        return {"l": ParamSpec((d_out,))}

    def init(self, layer, cfg, gen):
        layer.adapter_l.fill_(1.0)

    def forward(self, layer, x, y):
        lv = layer.adapter_l
        if y.dtype == lv.dtype and not recording(y, lv) and owns_output(layer, y, autograd=False):
            return y.mul_(lv)  # forward only: scale the fresh base output where it lies
        return (as_operand(y, lv.dtype) * lv).to(y.dtype)  # under autograd y is kept for l's gradient
