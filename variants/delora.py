"""DeLoRA, decoupled low-rank adaptation (Bini, Girrbach, Akata, arXiv 2503.18225, §3 eq. 4-6).

    ΔW = (λ/r) · [B Ξ_AB A − D Ξ_CD C] · diag(w),   Ξ_AB = diag(1 / (‖b_i‖ ‖a_i‖)),  w_j = ‖W[:, j]‖
    y = x (W + ΔW)ᵀ + b

w is the per-input-column norm of the frozen W (official code and peft), computed once at init.
``init_style="paper"`` (default): A, B kaiming-uniform and the frozen copies C = A₀, D = B₀ are
subtracted, so ΔW = 0 exactly at init; A and B get gradients at step 0 (λ's is 0 since
the two terms cancel). ``init_style="peft"``: B = 0 and no frozen copy (exact identity; A and λ get
zero gradient at step 0, B a gradient amplified by the norm clamp). Both styles clamp the norms at
1e-4 as peft does (deviation: the paper divides by the raw norms). λ₀ = lambda0 (peft default 15).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import math

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is
from ._tensor_init import kaiming_uniform_
from .lora import add_lowrank

NORM_CLAMP = 1e-4


@dataclass(frozen=True)
class DeloraConfig(AdapterConfig):
    variant = "delora"
    unused = ("alpha",)  # the scale is λ (lambda0 at init)
    lambda0: float = 15.0
    init_style: Literal["paper", "peft"] = "paper"

    def check(self):
        if not math.isfinite(self.lambda0):
            raise self.fail("lambda0", f"must be finite, got {self.lambda0}")


def _coef(a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, r: int) -> torch.Tensor:
    return (lam / r) / (b.norm(dim=0).clamp(min=NORM_CLAMP) * a.norm(dim=1).clamp(min=NORM_CLAMP))


def _peft_delora_config(cfg) -> dict:
    if cfg.init_style != "peft":
        raise ValueError("delora: init_style='paper' keeps frozen copies C, D that peft's DeLoRA has no place for; "
                         "only an adapter made with init_style='peft' can be written for peft")
    return {"r": cfg.r, "delora_lambda": cfg.lambda0, "module_dropout": 0.0, "init_weights": True, "bias": "none"}


class Delora(Variant):
    name = "delora"
    Config = DeloraConfig
    # peft's DeloraConfig holds the peft init only: the paper init's frozen C, D have no place there
    peft_format = PeftFormat(
        peft_type="DELORA", claims=peft_type_is("DELORA"),
        tensors={"A": "delora_A", "B": "delora_B", "lam": "delora_lambda", "w_norm": "delora_w_norm"},
        to_config=lambda cfg, st: _peft_delora_config(cfg),
        from_config=lambda pcfg, shapes: {"r": int(pcfg.get("r", 8)), "init_style": "peft",
                                          "lambda0": float(pcfg.get("delora_lambda", 15.0))},
        reads=("r", "delora_lambda"), fixed={"bias": ("none",)}, inert=("init_weights",),
        training_only=("module_dropout",))
    needs_dense_weight = True

    def param_specs(self, d_in, d_out, r, cfg):
        specs = {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), "lam": ParamSpec((1,)),
                 "w_norm": ParamSpec((d_in,), trainable=False)}
        if cfg.init_style == "paper":
            specs.update(C=ParamSpec((r, d_in), trainable=False), D=ParamSpec((d_out, r), trainable=False))
        return specs

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): rank-1 terms must be independent")

    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_A, gen)
        if cfg.init_style == "paper":
            kaiming_uniform_(layer.adapter_B, gen)
            layer.adapter_C.copy_(layer.adapter_A)
            layer.adapter_D.copy_(layer.adapter_B)
        else:
            layer.adapter_B.zero_()
        layer.adapter_lam.fill_(cfg.lambda0)
        w = layer.adapter_w_norm  # float32, or float64 for a float64 adapter
        w.copy_(self.weight(layer).to(torch.promote_types(w.dtype, torch.float32)).norm(dim=0))

    def forward(self, layer, x, y):
        a, b, lam, w = layer.adapter_A, layer.adapter_B, layer.adapter_lam, layer.adapter_w_norm
        r = layer.adapter_rank
        if x.dtype == a.dtype:
            # (x ⊙ w) Aᵀ = x (A diag(w))ᵀ: scale the (r, d_in) factor, not the (tokens, d_in) input
            xa, scaled = x, lambda f: f * w
        else:  # x cast to the adapter dtype is a fresh copy: scale it in place, and autograd keeps it alone
            xa, scaled = x.to(a.dtype).mul_(w), lambda f: f
        h = (xa @ scaled(a).t()) * _coef(a, b, lam, r)
        if self.cfg.init_style == "paper":
            # the two terms are formed separately and subtracted before touching y, so that they
            # cancel bit for bit at init (C = A, D = B): exact identity
            c, d = layer.adapter_C, layer.adapter_D
            frozen = ((xa @ scaled(c).t()) * _coef(c, d, lam, r)) @ d.t()
            return y + (h @ b.t() - frozen).to(y.dtype)
        return add_lowrank(y, h, b, layer)
