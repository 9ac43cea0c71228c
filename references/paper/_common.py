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


# -- init statements -------------------------------------------------------------------------------
# Every paper module also states how the adapter state is born, independently of any implementation:
#   init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]   (one layer; W, b: the ORIGINAL base
#       weight (d_out, d_in) and bias before any adapter touched them; state: that layer's canonical
#       state as the subject initialised it; inputs: the layer's calibration inputs (tokens, d_in),
#       only for data-driven inits such as EVA, else None)
#   init_reference(W, b, cfg, inputs=None) -> dict   (optional: the deterministic tensors of the
#       initial state, computed in compute_dtype(); the audit evaluates it inside evaluated_in(float32)
#       and substitutes it into the subject's state to measure how far a correct low-precision
#       computation sits from the float64 statement, i.e. the tolerance of "deterministic" claims)
# Claims are stated up to the method's true ambiguities (signs of singular vectors, rotations within
# repeated singular values, which random draw): they measure invariant quantities only.

from dataclasses import dataclass as _dataclass  # noqa: E402


@_dataclass(frozen=True)
class InitClaim:
    """One statement about a layer's initial adapter state, measured on a given state.

    kind
      "exact":         ``value`` is a discrepancy that must be exactly 0 (B = 0, l = 1, C = A₀);
      "deterministic": ``value`` is a relative discrepancy from the float64 statement (≥ 0), judged
                       against the same claim evaluated on ``init_reference`` computed in float32;
      "distribution":  ``pit`` holds the draws mapped through the stated distribution's CDF (the
                       probability integral transform): uniform on [0, 1] when the draw follows the
                       statement; the audit pools them over layers and applies a KS test;
      "lower":         ``value`` must be ≥ ``bound`` (a structural fact, e.g. distinct paired vectors);
      "kurtosis":      ``pit`` holds draws standardised by their own σ (a Gaussian statement with σ free):
                       the audit pools them over layers and bounds their excess kurtosis, which tells a
                       Gaussian from a uniform or other family where a KS test with σ fitted is weak.
    ``statement`` says in words what is claimed (shown in the report).
    """

    metric: str
    kind: str
    statement: str
    value: float = 0.0
    pit: torch.Tensor | None = None
    bound: float = 0.0


def rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a − b| / max|b| in float64 (0 when both are 0)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    den = float(b.abs().max()) if b.numel() else 0.0
    num = float((a - b).abs().max()) if a.numel() else 0.0
    return num / den if den > 0 else num


def uniform_pit(x: torch.Tensor, bound: float) -> torch.Tensor:
    """PIT of draws stated to be U(−bound, bound): (x/bound + 1)/2, flattened, float64."""
    return ((x.detach().to(torch.float64).flatten() / bound) + 1) / 2


def normal_pit(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """PIT of draws stated to be N(mean, std²), flattened, float64."""
    z = (x.detach().to(torch.float64).flatten() - mean) / std
    return 0.5 * (1 + torch.erf(z / 2 ** 0.5))
