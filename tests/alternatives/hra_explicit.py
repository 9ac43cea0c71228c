"""HRA written independently: the product of reflections is formed as a dense matrix, then applied.

    H = H_0 H_1 ⋯ H_{r−1},   H_i = I − 2 u_i u_iᵀ / ‖u_i‖²,   W' = W H,   y = x W'ᵀ + b = (x Hᵀ) Wᵀ + b

(Yuan, Liu, Xu, arXiv 2405.17484, §3 eq. 4.) As an input hook: x ← x Hᵀ with the dense (d_in, d_in)
H built by multiplying the reflections left to right (ours applies them to x one at a time, last
first). Symmetric init (peft's): r/2 vectors drawn U(±1/√(r/2)) (kaiming_uniform, a = √5, fan_in =
r/2) with Tensor.uniform_ from the runtime's generator (other draws than ours), each repeated next to
itself (u_0 = u_1, ...), so each pair cancels and H = I numerically.

    python -m audit run --impl tests/alternatives/hra_explicit.py:HraExplicit --card hra
"""
from __future__ import annotations

import math

import torch

from variants import ParamSpec, Variant
from variants.hra import HraConfig


class HraExplicit(Variant):
    name = "hra"
    Config = HraConfig
    hook = "input"

    def param_specs(self, d_in, d_out, r, cfg):
        return {"u": ParamSpec((r, d_in))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > d_in:
            raise ValueError(f"HraConfig.r: r={cfg.r} exceeds d_in={d_in} of module {name!r}")

    def init(self, layer, cfg, gen):
        u = layer.adapter_u
        if cfg.apply_gs:  # Gram–Schmidt: no identity start; r independent draws
            bound = 1.0 / math.sqrt(u.shape[0])
            u.copy_(torch.empty(u.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen))
            return
        half = u.shape[0] // 2
        bound = 1.0 / math.sqrt(half)
        draw = torch.empty(half, u.shape[1], dtype=torch.float32).uniform_(-bound, bound, generator=gen)
        u.copy_(torch.stack([draw, draw], dim=1).reshape(u.shape))

    @staticmethod
    def product(u: torch.Tensor) -> torch.Tensor:
        """H_0 H_1 ⋯ H_{r−1} as a dense (d_in, d_in) matrix."""
        eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
        H = eye
        for ui in u:
            H = H @ (eye - 2 * torch.outer(ui, ui) / ui.dot(ui))
        return H

    def forward_input(self, layer, x):
        u = layer.adapter_u
        if self.cfg.apply_gs:  # classical Gram–Schmidt, then the product of the orthonormal reflections
            basis = []
            for ui in u:
                for q in basis:
                    ui = ui - q.dot(ui) * q
                basis.append(ui / ui.norm())
            u = torch.stack(basis)
        H = self.product(u)
        return (x.to(H.dtype) @ H.T).to(x.dtype)
