"""Shared float64 helpers for the paper formulas (no in-place ops, autograd-safe)."""

from __future__ import annotations

import torch

DTYPE = torch.float64


def f64(t: torch.Tensor | None) -> torch.Tensor | None:
    """Cast to float64 keeping the autograd graph (``.double()`` is a no-op on float64)."""
    return None if t is None else t.to(DTYPE)


def linear(x: torch.Tensor, W_eff: torch.Tensor, b_eff: torch.Tensor | None) -> torch.Tensor:
    """``x @ W_effᵀ + b_eff`` in float64."""
    y = f64(x) @ W_eff.T
    return y if b_eff is None else y + b_eff


def lowrank_scaling(cfg: dict, *, allow_rslora: bool) -> float:
    """``alpha/r`` (or ``alpha/√r`` with ``use_rslora`` where the variant allows it)."""
    r, alpha = int(cfg["r"]), float(cfg["alpha"])
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    if cfg.get("use_rslora", False):
        if not allow_rslora:
            raise ValueError("use_rslora is not part of this variant's reference formula (STATE_LAYOUT.md)")
        return alpha / r**0.5
    return alpha / r
