"""HiRA, Hadamard high-rank adaptation (Huang, Ko, Zhuang, Tang, Zhang, ICLR 2025), §4.3 eq. (6).

    ΔW = W₀ ⊙ (B A),   W_eff = W₀ + ΔW = W₀ ⊙ (1 + B A),   y = x W_effᵀ + b,   A (r, d_in), B (d_out, r)

W₀ is the frozen base weight in its canonical (d_out, d_in) layout (transformers' Conv1D stores W₀ᵀ: the
Hadamard product is taken with the transpose view, never with the stored tensor). The rank of ΔW is not
bounded by r (that of B A is): the paper's point. No scale (the authors' code keeps a scale_ab field but
never applies it; peft has none). Init (the authors' code and peft): A kaiming-uniform (a = √5), i.e.
U(±1/√d_in), B = 0, so ΔW = 0 exactly; at step 0 A's gradient is exactly zero (∂L/∂A = Bᵀ(W₀ ⊙ G), G the
gradient of ΔW). The hook forms the dense ΔW (as peft and the authors do) and adds it through
``miss.dense_update``, which recomputes y with W₀ + ΔW where the dtypes allow.
"""
from __future__ import annotations

from dataclasses import dataclass

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, conv1d_targets, peft_type_is
from ._tensor_init import kaiming_uniform_
from .miss import dense_update


@dataclass(frozen=True)
class HiraConfig(AdapterConfig):
    """r: the rank of B A (peft's default 32; any r > 0, ΔW's own rank is not bounded by it). alpha is not used
    (HiRA has no scale)."""

    variant = "hira"
    unused = ("alpha",)
    r: int = 32


class Hira(Variant):
    name = "hira"
    Config = HiraConfig
    # peft's HiraConfig: hira_A (r, d_in), hira_B (d_out, r) as ours, for nn.Linear and Conv1D (fan_in_fan_out)
    peft_format = PeftFormat(
        peft_type="HIRA", claims=peft_type_is("HIRA"), tensors={"A": "hira_A", "B": "hira_B"},
        to_config=lambda cfg, st: {"r": cfg.r, "hira_dropout": 0.0, "init_weights": True,
                                   "fan_in_fan_out": conv1d_targets(st)},
        from_config=lambda pcfg, shapes: {"r": int(pcfg.get("r", 32))},
        reads=("r",), fixed={"rank_pattern": (None, {})}, inert=("init_weights",),
        training_only=("hira_dropout",), conv1d=None)

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r))}

    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_A, gen)  # U(±1/√d_in)
        layer.adapter_B.zero_()                 # ΔW = W₀ ⊙ (0·A) = 0 exactly

    def forward(self, layer, x, y):
        a, b = layer.adapter_A, layer.adapter_B
        w = self.weight(layer)  # canonical W₀ (d_out, d_in): Conv1D's transpose view
        return dense_update(layer, x, y, w, w.to(b.dtype) * (b @ a))
