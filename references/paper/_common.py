"""Shared float64 helpers for the paper formulas (no in-place ops, autograd-safe)."""

from __future__ import annotations

import contextlib

import torch

DTYPE = torch.float64
_COMPUTE = [DTYPE]


@contextlib.contextmanager
def evaluated_in(dtype: torch.dtype):
    """Evaluate the formulas in ``dtype`` instead of float64 (every ``f64`` cast goes there).

    The audit uses this to measure the formula's own rounding spread in a run's precision, which
    sets how far a correct low-precision implementation may sit from the float64 truth.
    """
    _COMPUTE.append(dtype)
    try:
        yield
    finally:
        _COMPUTE.pop()


def compute_dtype() -> torch.dtype:
    """The dtype the formulas compute in: float64 unless inside ``evaluated_in``."""
    return _COMPUTE[-1]


def f64(t: torch.Tensor | None) -> torch.Tensor | None:
    """Cast to the compute dtype (float64 by default) keeping the autograd graph."""
    return None if t is None else t.to(_COMPUTE[-1])


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
