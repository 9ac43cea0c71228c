"""DoRA paper formula (float64)."""

from __future__ import annotations

import math

import torch

from . import lora
from ._common import InitClaim, f64, linear, lowrank_scaling, rel_max

EQUATION = "W′ = m · (W₀ + s·BA) / ‖W₀ + s·BA‖_c   (‖·‖_c: one norm per output neuron)"
CITATION = (
    "Liu et al., DoRA, arXiv:2402.09353, §4.1 eq. (5) (eq. number unverified); "
    "§4.3: treating the norm as a constant in backprop is an optional memory saving (an open choice)"
)


def row_norm(V: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row of a (d_out, d_in) weight (the paper's column norm in its (d_in, d_out) layout)."""
    return torch.linalg.vector_norm(V, dim=1)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = diag(m / ‖W + sBA‖_row)(W + sBA), b_eff = b (arXiv:2402.09353 §4.1 eq. (5), number unverified).

    state: A (r, d_in), B (d_out, r), m (d_out). cfg: r, alpha (use_rslora honoured as in LoRA).
    Conventions: the norm is per output row (dim=1 of (d_out, d_in)); the bias is NOT scaled.
    ``cfg["detach_norm"]`` (an open choice, not a config field): False (default) differentiates
    through the norm as eq. (5) does; True treats it as a constant for the gradient, §4.3's optional
    memory saving that peft takes (values unchanged either way).
    """
    V = f64(W) + lowrank_scaling(cfg, allow_rslora=True) * (f64(state["B"]) @ f64(state["A"]))
    n = row_norm(V)
    if cfg.get("detach_norm", False):
        n = n.detach()
    m = f64(state["m"]).reshape(-1)
    return (m / n).unsqueeze(1) * V, f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def magnitude_error(W: torch.Tensor, state: dict, cfg: dict) -> float:
    """max |‖W_eff‖_row − m| (DoRA's magnitude/direction split, arXiv:2402.09353 §4.1)."""
    W_eff, _ = merged(W, None, state, cfg)
    return float((row_norm(W_eff) - f64(state["m"]).reshape(-1)).abs().max())


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in), B (d_out, r), m (d_out)."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r), "m": (d_out,)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """DoRA init (arXiv:2402.09353 §4.1): m = ‖W₀‖_c (one norm per OUTPUT row of (d_out, d_in)), and
    B = 0, A drawn as in LoRA (from the family cfg["init_A"] names: references/paper/lora.py)."""
    m = state["m"].detach().to(torch.float64).reshape(-1)
    ref = row_norm(W.detach().to(torch.float64))
    m_err = rel_max(m, ref) if m.shape == ref.shape else math.inf
    return [lora.zero_claim("B", state["B"], "DoRA §4.1"),
            *lora.A_draw_claims(state["A"], cfg, "DoRA §4.1 (as LoRA)"),
            InitClaim("m_row_norm", "deterministic", "§4.1: m = ‖W‖ of each output row (dim=1 of (d_out, d_in))",
                      value=m_err)]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """m = ‖W‖_row in compute_dtype() (§4.1)."""
    return {"m": row_norm(f64(W))}
