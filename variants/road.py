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

from ._base import ParamSpec, Variant
from ._config import AdapterConfig

SIZE_FACTOR = {"road_1": 0.5, "road_2": 1, "road_4": 2}


@dataclass(frozen=True)
class RoadConfig(AdapterConfig):
    variant = "road"
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
        h = y.to(theta.dtype)
        # rotate_half(h) ⊙ s = partner(h) ⊙ s±: the group's two halves swapped (one copy, and one
        # flip in backward, where stacking a negated half costs a negation and two slice gradients),
        # times s with its first half negated (a d_out-vector, free)
        halves = s.view(-1, 2, g // 2)
        signed = torch.stack((-halves[:, 0], halves[:, 1]), dim=1).view(s.shape)
        partner = h.reshape(*h.shape[:-1], -1, 2, g // 2).flip(-2).view(h.shape)
        out = partner * signed
        return out.addcmul_(h, c).to(y.dtype)  # in place on our own product; h (= y) stays intact
