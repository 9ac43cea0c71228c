"""DeLoRA written independently: the normalised delta is added to the base output in (at least)
float32 and the sum is rounded once (peft and ours round the delta to the output dtype first).

    ΔW = (λ/r) · [B Ξ_AB A − D Ξ_CD C] · diag(w),   Ξ_AB = diag(1 / (max(‖b_i‖,1e-4)·max(‖a_i‖,1e-4)))
    y' = round( y + (x ⊙ w) [A ᵀ Ξ_AB Bᵀ − Cᵀ Ξ_CD Dᵀ] · λ/r )

(Bini, Girrbach, Akata, arXiv 2503.18225, §3; w_j = ‖W[:, j]‖ per input column, norms clamped at
1e-4 as peft.) The input is scaled by w first, as peft writes it (ours folds w into A). The two terms
are computed by the same function, so at init (C = A, D = B) they cancel bit for bit and λ's
gradient is exactly 0. Init as the paper (init_style="paper"): A, B kaiming-uniform (drawn with
Tensor.uniform_ from the runtime's generator: other draws than ours), frozen copies C = A₀,
D = B₀, λ = lambda0; init_style="peft": B = 0 and no frozen copy. w is computed in float64 and
rounded to the adapter dtype.

    python -m audit run --impl tests/alternatives/delora_round_once.py:DeloraRoundOnce --card delora
"""
from __future__ import annotations

import math

import torch

from variants import ParamSpec, Variant
from variants.delora import DeloraConfig
from _dense import weight_of

CLAMP = 1e-4


def _normalised_lowrank(xw: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """(x⊙w) Aᵀ Ξ Bᵀ with Ξ_ii = 1/(max(‖B[:, i]‖, 1e-4) · max(‖A[i]‖, 1e-4))."""
    a_len = torch.linalg.vector_norm(A, dim=1).clamp_min(CLAMP)
    b_len = torch.linalg.vector_norm(B, dim=0).clamp_min(CLAMP)
    return ((xw @ A.T) / (a_len * b_len)) @ B.T


class DeloraRoundOnce(Variant):
    name = "delora"
    Config = DeloraConfig
    needs_dense_weight = True

    def param_specs(self, d_in, d_out, r, cfg):
        specs = {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), "lam": ParamSpec((1,)),
                 "w_norm": ParamSpec((d_in,), trainable=False)}
        if cfg.init_style == "paper":
            specs["C"] = ParamSpec((r, d_in), trainable=False)
            specs["D"] = ParamSpec((d_out, r), trainable=False)
        return specs

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):
            raise ValueError(f"DeloraConfig.r: r={cfg.r} exceeds min(d_in, d_out)={min(d_in, d_out)} "
                             f"for module {name!r}")

    @staticmethod
    def _kaiming(t: torch.Tensor, gen: torch.Generator) -> None:
        bound = 1.0 / math.sqrt(t.shape[1])  # kaiming_uniform(a=√5), fan_in = size(1)
        t.copy_(torch.empty(t.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen))

    def init(self, layer, cfg, gen):
        self._kaiming(layer.adapter_A, gen)
        if cfg.init_style == "paper":
            self._kaiming(layer.adapter_B, gen)
            layer.adapter_C.copy_(layer.adapter_A)
            layer.adapter_D.copy_(layer.adapter_B)
        else:
            layer.adapter_B.zero_()
        layer.adapter_lam.fill_(cfg.lambda0)
        layer.adapter_w_norm.copy_(torch.linalg.vector_norm(weight_of(layer).detach().double(), dim=0))

    def forward(self, layer, x, y):
        A, B, lam, w = layer.adapter_A, layer.adapter_B, layer.adapter_lam, layer.adapter_w_norm
        acc = torch.promote_types(torch.promote_types(y.dtype, A.dtype), torch.float32)
        xw = x.to(A.dtype) * w
        term = _normalised_lowrank(xw, A, B)
        if self.cfg.init_style == "paper":
            term = term - _normalised_lowrank(xw, layer.adapter_C, layer.adapter_D)
        delta = term * (lam / A.shape[0])
        return (y.to(acc) + delta.to(acc)).to(y.dtype)
