"""LoHa, low-rank Hadamard product (FedPara, Hyeon-Woo, Ye-Bin, Oh, arXiv 2108.06098,
§3, the low-rank Hadamard product parameterisation; as an additive adapter: LyCORIS, Yeh et al.,
arXiv 2309.14859, §3; equation numbers unverified).

    ΔW = s · (w1_a w1_b) ⊙ (w2_a w2_b),   w1_a, w2_a (d_out, r),  w1_b, w2_b (r, d_in),  s = alpha / r
    y = x (W + ΔW)ᵀ + b                   (bias unchanged; rank ΔW ≤ r², FedPara Proposition 1)

Init (peft's, init_weights=True): w1_a, w1_b, w2_a ~ kaiming_uniform(a=√5) (U(±1/√fan_in), fan_in the
second dimension), w2_b = 0, so ΔW = 0 exactly. At step 0 only w2_b gets a gradient (w1_a, w1_b, w2_a
are multiplied by w2_a w2_b = 0). LyCORIS instead zeroes w2_a with Gaussian draws: a documented
difference, not ours.

Inference without ΔW where that is cheaper: (P ⊙ Q)_oi = Σ_jk w1_a[o,j] w2_a[o,k] · w1_b[j,i] w2_b[k,i], so
ΔW = U V with U (d_out, r²), V (r², d_in) the row-/column-wise Khatri–Rao products of the factors, and
x ΔWᵀ = (x Vᵀ) Uᵀ is exact in exact arithmetic. Used without autograd when U and V are no larger than ΔW
(r²·(d_in + d_out) ≤ d_in·d_out). Its sum over r² products cancels where P or Q does, so its rounding
can be several times that of P ⊙ Q (the audit's Adam trajectories flagged it at one seed in ten):
training materialises ΔW by ``HadamardDelta``, which keeps only the four factors for backward, as peft does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is
from ._inplace import recording
from ._tensor_init import kaiming_uniform_
from .lora import add_lowrank


@dataclass(frozen=True)
class LohaConfig(AdapterConfig):
    variant = "loha"

    def check(self):
        if not math.isfinite(self.alpha) or self.alpha == 0:
            raise self.fail("alpha", f"must be finite and non-zero (s = alpha / r; alpha = 0 makes ΔW and every "
                                     f"gradient zero forever), got {self.alpha}")


def khatri_rao_factors(w1_a, w1_b, w2_a, w2_b) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U V = (w1_a w1_b) ⊙ (w2_a w2_b): U[o, j·r+k] = w1_a[o,j] w2_a[o,k] (d_out, r²),
    V[j·r+k, i] = w1_b[j,i] w2_b[k,i] (r², d_in)."""
    d_out, r = w1_a.shape
    u = (w1_a[:, :, None] * w2_a[:, None, :]).reshape(d_out, r * r)
    v = (w1_b[:, None, :] * w2_b[None, :, :]).reshape(r * r, w1_b.shape[1])
    return u, v


class HadamardDelta(torch.autograd.Function):
    """ΔW = s·(w1_a w1_b) ⊙ (w2_a w2_b), saving only the factors: backward recomputes the two products
    (∂ΔW/∂P = s·Q, ∂ΔW/∂Q = s·P), so one (d_out, d_in) tensor is alive across the step, not three."""

    @staticmethod
    def forward(ctx, w1_a, w1_b, w2_a, w2_b, s: float):
        ctx.save_for_backward(w1_a, w1_b, w2_a, w2_b)
        ctx.s = s
        return (w1_a @ w1_b) * (w2_a @ w2_b) * s

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        w1_a, w1_b, w2_a, w2_b = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = grad * ctx.s
        g1_a = g1_b = g2_a = g2_b = None
        if need[0] or need[1]:
            gp = g * (w2_a @ w2_b)  # ∂L/∂P, P = w1_a w1_b
            g1_a = gp @ w1_b.t() if need[0] else None
            g1_b = w1_a.t() @ gp if need[1] else None
        if need[2] or need[3]:
            gq = g * (w1_a @ w1_b)  # ∂L/∂Q, Q = w2_a w2_b
            g2_a = gq @ w2_b.t() if need[2] else None
            g2_b = w2_a.t() @ gq if need[3] else None
        return g1_a, g1_b, g2_a, g2_b, None


def factored(d_in: int, d_out: int, r: int) -> bool:
    """Use x ΔWᵀ = (x Vᵀ) Uᵀ: U and V hold no more numbers than ΔW."""
    return r * r * (d_in + d_out) <= d_in * d_out


class Loha(Variant):
    name = "loha"
    Config = LohaConfig
    peft_format = PeftFormat(
        peft_type="LOHA", claims=peft_type_is("LOHA"),
        tensors={t: f"hada_{t}" for t in ("w1_a", "w1_b", "w2_a", "w2_b")},
        to_config=lambda cfg, st: {"r": cfg.r, "alpha": cfg.alpha, "rank_dropout": 0.0, "module_dropout": 0.0,
                                   "init_weights": True},
        from_config=lambda pcfg, shapes: {"r": int(pcfg.get("r", 8)), "alpha": float(pcfg.get("alpha", 8.0))},
        reads=("r", "alpha"), inert=("init_weights", "use_effective_conv2d"),
        training_only=("rank_dropout", "module_dropout"))
    delta = HadamardDelta  # the autograd Function building ΔW in training

    def param_specs(self, d_in, d_out, r, cfg):
        return {"w1_a": ParamSpec((d_out, r)), "w1_b": ParamSpec((r, d_in)),
                "w2_a": ParamSpec((d_out, r)), "w2_b": ParamSpec((r, d_in))}

    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_w1_a, gen)  # fan_in = r
        kaiming_uniform_(layer.adapter_w1_b, gen)  # fan_in = d_in
        kaiming_uniform_(layer.adapter_w2_a, gen)  # fan_in = r
        layer.adapter_w2_b.zero_()

    def forward(self, layer, x, y):
        w1_a, w1_b = layer.adapter_w1_a, layer.adapter_w1_b
        w2_a, w2_b = layer.adapter_w2_a, layer.adapter_w2_b
        s = self.scale(self.cfg, layer.adapter_rank)
        d_out, r = w1_a.shape
        xa = x.to(w1_a.dtype)
        # the factored sum runs over r² products, which cancel where (w1_a w1_b) or (w2_a w2_b) does: its
        # rounding is up to ~5× peft's materialised ΔW (measured on the audit's Adam trajectories), so it
        # serves inference only; training takes ΔW, the paper's (and peft's) order of operations
        if not recording(xa, w1_a, w1_b, w2_a, w2_b) and factored(w1_b.shape[1], d_out, r):
            u, v = khatri_rao_factors(w1_a, w1_b, w2_a, w2_b)
            return add_lowrank(y, xa @ (v * s).t(), u, layer)  # s on V (r², d_in): the smallest operand
        # one 2-D addmm, not the in-place batched path: with a full (d_out, d_in) ΔW, baddbmm's expanded
        # operand would make backward build a (batch, d_out, d_in) gradient before summing it
        return add_lowrank(y, xa, self.delta.apply(w1_a, w1_b, w2_a, w2_b, s))
