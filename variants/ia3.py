"""(IA)³ output scaling (Liu et al., T-Few, arXiv 2205.05638, §3.3): keys and values rescaled.

    y = (x Wᵀ + b) ⊙ l,   l (d_out) = 1 at init   →   W_eff = diag(l) W,  b_eff = l ⊙ b

Paper placement: k and v projections (the default roles here); the FFN's scaling is the separate
``ia3_ff`` variant (input of the down-projection). Identity at init is exact; l gets a gradient at
step 0. Like the paper and peft, the bias is scaled too. ``r`` and ``alpha`` are unused.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, conv1d_targets
from ._inplace import as_operand, owns_output, recording


@dataclass(frozen=True)
class Ia3Config(AdapterConfig):
    variant = "ia3"
    unused = ("r", "alpha")


def peft_feedforward(pcfg, name: str) -> bool:
    """peft's IA3 input-scaling test for module ``name`` (peft.tuners.ia3.model._check_target_module_feedforward):
    a string feedforward_modules is fullmatched as a regex, a list matched as name suffixes."""
    ff = pcfg.get("feedforward_modules") or []
    if isinstance(ff, str):
        return re.fullmatch(ff, name) is not None
    return any(name.endswith(k) for k in ff)


def peft_ia3_format(feedforward: bool) -> PeftFormat:
    """peft's IA3Config: ia3_l is (d_out, 1) for output scaling, (1, d_in) for input scaling (feedforward)."""
    return PeftFormat(
        peft_type="IA3", tensors={"l": "ia3_l"}, transforms={"l": "row" if feedforward else "column"},
        claims=lambda pcfg, names: pcfg.get("peft_type") == "IA3" and bool(names)
        and all(peft_feedforward(pcfg, n) == feedforward for n in names),
        to_config=lambda cfg, st: {"feedforward_modules": sorted(st.targets) if feedforward else [],
                                   "init_ia3_weights": True, "fan_in_fan_out": conv1d_targets(st)},
        from_config=lambda pcfg, shapes: {}, reads=("feedforward_modules",), inert=("init_ia3_weights",), conv1d=None)


class Ia3(Variant):
    name = "ia3"
    Config = Ia3Config
    peft_format = peft_ia3_format(feedforward=False)
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
