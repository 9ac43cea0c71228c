"""DoRA (Liu et al., arXiv 2402.09353, §4.1 eq. 5; §4.3 for the detached norm).

    V = W + s·B A,   W' = diag(m / ‖V‖_row) V,   y = x W'ᵀ + b      (s = alpha / r)

The norm is one value per output neuron (row of the (d_out, d_in) weight). As the paper's §4.3
recommends (and peft does), ‖V‖_row is treated as a constant in backprop (detached). The bias is not
scaled. Init: m = ‖W‖_row (computed in float32, or in float64 for a float64 adapter, then cast to
the adapter dtype), A kaiming-uniform, B = 0, so identity is exact in fp32 and approximate with a
bf16 base. At step 0 A's gradient is 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._base import ParamSpec
from ._tensor_init import kaiming_uniform_
from .lora import _PLAIN_INITS, Lora, LoraConfig, _peft_lora_fields, add_lowrank, peft_lora_format


@dataclass(frozen=True)
class DoraConfig(LoraConfig):
    variant = "dora"

    def check(self):
        super().check()
        if self.dropout:
            raise self.fail("dropout", "is not supported for DoRA here (its magnitude term would need the base "
                                       f"output of the dropped input, as peft computes it); got {self.dropout}")


def row_norm(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
    """‖W + s·B A‖ per row without the (d_out, d_in) matrix: ‖W_i‖·√(1 + (2s⟨W_i, (BA)_i⟩ + s²‖(BA)_i‖²)/‖W_i‖²),
    with ⟨W_i, (BA)_i⟩ = rows of (W Aᵀ) ⊙ B and ‖(BA)_i‖² = rows of (B (A Aᵀ)) ⊙ B. One pass over W (W Aᵀ)
    besides its norm, where W + sBA writes and reads a (d_out, d_in) temporary; exactly ‖W_i‖ when B = 0
    (√1 = 1), so m = ‖W‖ at init gives m / n = 1 bit for bit. A zero row of W gives s·‖(BA)_i‖."""
    wn = w.norm(dim=1)
    cross = ((w @ a.t()) * b).sum(1)
    sq = ((b @ (a @ a.t())) * b).sum(1)
    safe = torch.where(wn > 0, wn, torch.ones_like(wn))
    n = safe * torch.sqrt((1 + (2 * s * cross + s * s * sq) / safe.square()).clamp_min(0))
    return torch.where(wn > 0, n, s * sq.clamp_min(0).sqrt())


class Dora(Lora):
    name = "dora"
    Config = DoraConfig
    needs_dense_weight = True
    peft_format = peft_lora_format(True, claim=_PLAIN_INITS, dora=True, training_only=("lora_dropout",),
                                   fields=lambda pcfg, shapes: {**_peft_lora_fields(pcfg, shapes), "dropout": 0.0})

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r)), "m": ParamSpec((d_out,))}

    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_A, gen)
        layer.adapter_B.zero_()
        m = layer.adapter_m
        # float32, or float64 for a float64 adapter (never narrower than the adapter): an fp32 or
        # fp64 forward then computes ‖W + s·0‖_row exactly as here, so m / ‖·‖ = 1 at init
        m.copy_(self.weight(layer).to(torch.promote_types(m.dtype, torch.float32)).norm(dim=1))

    def forward(self, layer, x, y):
        a, b, m = layer.adapter_A, layer.adapter_B, layer.adapter_m
        s = self.scale(self.cfg, layer.adapter_rank)
        with torch.no_grad():
            n = row_norm(self.weight(layer).to(a.dtype), a, b, s)
        mag = m / n
        h = (x.to(a.dtype) @ a.t()) * s
        if layer.bias is None:
            # y' = mag ⊙ (y + s·B(Ax)): two passes over the output (the low-rank term accumulated into y where
            # nobody else sees it, then the scaling), rounded once; exactly y at init (B = 0, mag = 1)
            same = y.dtype == a.dtype
            return (add_lowrank(y if same else y.to(a.dtype), h, b, layer if same else None) * mag).to(y.dtype)
        # y' = mag ⊙ (Wx + s·B(Ax)) + b, the bias not scaled, added to y as a delta: exactly y at init (mag = 1,
        # B = 0 give v = base bit for bit), and m's gradient Σ g ⊙ (Wx + s·BAx) never cancels against b
        base = (y - layer.bias).to(a.dtype)
        v = add_lowrank(base, h, b)
        return y + (v * mag - base).to(y.dtype)
