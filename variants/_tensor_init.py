"""Seeded init helpers shared by the variants (drawn on CPU, then moved: same seed, same adapter)."""
from __future__ import annotations

import math

import torch


def uniform_(t: torch.Tensor, bound: float, gen: torch.Generator) -> torch.Tensor:
    """Fill t with U(-bound, bound) from gen."""
    draw = torch.rand(t.shape, generator=gen, dtype=torch.float64) * 2 - 1
    return t.copy_(draw * bound)


def kaiming_uniform_(t: torch.Tensor, gen: torch.Generator, a: float = math.sqrt(5), fan_in: int | None = None) -> torch.Tensor:
    """torch's kaiming_uniform_ (leaky_relu gain with slope a), fan_in = t.shape[1] by default."""
    fan = fan_in if fan_in is not None else t.shape[1]
    gain = math.sqrt(2.0 / (1 + a * a))
    return uniform_(t, gain * math.sqrt(3.0 / fan), gen)


def normal_(t: torch.Tensor, std: float, gen: torch.Generator, mean: float = 0.0) -> torch.Tensor:
    draw = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    return t.copy_(draw * std + mean)


def top_r_svd(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-r SVD of w computed in float64: (U_r (d_out, r), S_r (r,), Vh_r (r, d_in)).

    Signs are fixed (largest-magnitude entry of each u_i positive) so the factors are reproducible.
    """
    u, s, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
    u, s, vh = u[:, :r], s[:r], vh[:r]
    idx = u.abs().argmax(dim=0)
    sign = torch.sign(u[idx, torch.arange(u.shape[1])])
    sign[sign == 0] = 1
    return u * sign, s, vh * sign[:, None]
