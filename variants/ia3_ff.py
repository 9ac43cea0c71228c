"""(IA)³ feed-forward scaling (Liu et al., T-Few, arXiv 2205.05638, §3.3): (l_ff ⊙ γ(W₁x)) W₂.

As a hook on the FFN down-projection's input: y = (x ⊙ l) Wᵀ + b, l (d_in) = 1 at init, so
W_eff = W diag(l) and the bias is unchanged (peft's ``feedforward_modules``). For gated MLPs the
down-projection input is act(gate)·up, exactly where the paper puts l_ff. Identity is exact.
``r`` and ``alpha`` are unused.
"""
from __future__ import annotations

from dataclasses import dataclass

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._inplace import as_operand
from .ia3 import peft_ia3_format


@dataclass(frozen=True)
class Ia3FFConfig(AdapterConfig):
    variant = "ia3_ff"
    unused = ("r", "alpha")


class Ia3FF(Variant):
    name = "ia3_ff"
    Config = Ia3FFConfig
    peft_format = peft_ia3_format(feedforward=True)
    hook = "input"
    default_roles = ("down",)

    def param_specs(self, d_in, d_out, r, cfg):
        return {"l": ParamSpec((d_in,))}

    def init(self, layer, cfg, gen):
        layer.adapter_l.fill_(1.0)

    def forward_input(self, layer, x):
        lv = layer.adapter_l
        return (as_operand(x, lv.dtype) * lv).to(x.dtype)
