"""RoAd, 2D rotary adaptation (Liao & Monz, arXiv 2409.00119, §3 eq. 3-4): y' = R (x Wᵀ + b).

R is block-diagonal in 2×2 rotations-with-scale: for a pair (p, q) of outputs,
    y'_p = α_p cos θ_p · p − α_p sin θ_p · q,    y'_q = α_q cos θ_q · q + α_q sin θ_q · p
road_1 shares one (α, θ) per pair, road_2 has one per output, road_4 one per matrix entry.
Pairing (peft's, a deliberate deviation from the paper's adjacent pairs for speed): inside each
group of ``group_size`` consecutive outputs, position j pairs with j + group_size/2. The hook acts
after the bias, so the bias is rotated too (b_eff = R b). Init θ = 0, α = 1: exact identity.
road_4: θ of the cos entries and α of the sin entries have zero gradient at step 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is

SIZE_FACTOR = {"road_1": 0.5, "road_2": 1, "road_4": 2}


@dataclass(frozen=True)
class RoadConfig(AdapterConfig):
    variant = "road"
    unused = ("r", "alpha")
    road_variant: Literal["road_1", "road_2", "road_4"] = "road_1"
    group_size: int = 64

    def check(self):
        if self.group_size <= 0 or self.group_size % 2:
            raise self.fail("group_size", f"must be a positive even integer, got {self.group_size}")


def road_columns(variant: str, g: int, theta: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output position: (c, s) with c = α cos θ, s = α sin θ, in peft's memory layout."""
    if variant == "road_1":
        theta = theta.reshape(-1, g // 2).repeat(1, 2).flatten()
        alpha = alpha.reshape(-1, g // 2).repeat(1, 2).flatten()
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_2":
        return alpha * theta.cos(), alpha * theta.sin()
    theta, alpha = theta.reshape(-1, 2, g), alpha.reshape(-1, 2, g)
    return (alpha[:, 0] * theta[:, 0].cos()).flatten(), (alpha[:, 1] * theta[:, 1].sin()).flatten()


class Road(Variant):
    name = "road"
    Config = RoadConfig
    peft_format = PeftFormat(
        peft_type="ROAD", tensors={"theta": "road_theta", "alpha": "road_alpha"}, claims=peft_type_is("ROAD"),
        to_config=lambda cfg, st: {"variant": cfg.road_variant, "group_size": cfg.group_size, "init_weights": True},
        from_config=lambda pcfg, shapes: {"road_variant": pcfg.get("variant", "road_1"),
                                          "group_size": int(pcfg.get("group_size", 64))},
        reads=("variant", "group_size"), inert=("init_weights",))

    def param_specs(self, d_in, d_out, r, cfg):
        n = int(d_out * SIZE_FACTOR[cfg.road_variant])
        return {"theta": ParamSpec((n,)), "alpha": ParamSpec((n,))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if d_out % cfg.group_size:
            raise ValueError(f"RoadConfig.group_size: {cfg.group_size} does not divide d_out={d_out} of "
                             f"module {name!r}; choose an even divisor of every target's d_out")

    def init(self, layer, cfg, gen):
        layer.adapter_theta.zero_()
        layer.adapter_alpha.fill_(1.0)

    def forward(self, layer, x, y):
        theta, alpha = layer.adapter_theta, layer.adapter_alpha
        g = self.cfg.group_size
        c, s = road_columns(self.cfg.road_variant, g, theta, alpha)
        return PairRotation.apply(y.to(theta.dtype), c, s, g).to(y.dtype)


class PairRotation(torch.autograd.Function):
    """out = h ⊙ c + rotate_half(h) ⊙ s (eq. 4): in each group of g outputs, the first half gets
    c_0 h_0 − s_0 h_1 and the second c_1 h_1 + s_1 h_0 (the minus sign is exact: addcmul's value=-1).

    Exact and allocation-lean: one new tensor forward (h ⊙ c, then each half accumulates its
    partner half in place) and three backward, where autograd on the composed ops (a swapped copy,
    two products, a flip back) allocates five. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, h, c, s, g):
        h = h.contiguous()
        out = h * c
        hg, og, sg = _groups(h, g), _groups(out, g), s.view(-1, 2, g // 2)
        og[:, :, 0].addcmul_(hg[:, :, 1], sg[:, 0], value=-1)
        og[:, :, 1].addcmul_(hg[:, :, 0], sg[:, 1])
        ctx.save_for_backward(h, c, s)
        ctx.g = g
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        h, c, s = ctx.saved_tensors
        g, d = ctx.g, h.shape[-1]
        grad = grad.contiguous()
        gg, hg, sg = _groups(grad, g), _groups(h, g), s.view(-1, 2, g // 2)
        gh = gc = gs = None
        if ctx.needs_input_grad[0]:
            gh = grad * c
            ghg = _groups(gh, g)
            ghg[:, :, 1].addcmul_(gg[:, :, 0], sg[:, 0], value=-1)  # out_0 = c_0 h_0 − s_0 h_1
            ghg[:, :, 0].addcmul_(gg[:, :, 1], sg[:, 1])  # out_1 = c_1 h_1 + s_1 h_0
        if ctx.needs_input_grad[1]:
            gc = (grad * h).reshape(-1, d).sum(0)
        if ctx.needs_input_grad[2]:
            gs = torch.stack((-(gg[:, :, 0] * hg[:, :, 1]).sum(0), (gg[:, :, 1] * hg[:, :, 0]).sum(0)), dim=1).view(d)
        return gh, gc, gs, None


def _groups(t: torch.Tensor, g: int) -> torch.Tensor:
    """(tokens, groups, 2 halves, g/2) view of a contiguous (..., d_out) tensor."""
    return t.view(-1, t.shape[-1] // g, 2, g // 2)
