"""DoRA paper formula (float64)."""

from __future__ import annotations

import torch

from ._common import f64, linear, lowrank_scaling

EQUATION = "W′ = m · (W₀ + s·BA) / ‖W₀ + s·BA‖_c   (‖·‖_c: one norm per output neuron)"
CITATION = (
    "Liu et al., DoRA, arXiv:2402.09353, §4.1 eq. (5) (eq. number unverified); "
    "§4.3: the norm is treated as a constant in backprop"
)


def row_norm(V: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row of a (d_out, d_in) weight (the paper's column norm in its (d_in, d_out) layout)."""
    return torch.linalg.vector_norm(V, dim=1)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict, *, detach_norm: bool = True):
    """W_eff = diag(m / ‖W + sBA‖_row)(W + sBA), b_eff = b (arXiv:2402.09353 §4.1 eq. (5), number unverified).

    state: A (r, d_in), B (d_out, r), m (d_out). cfg: r, alpha (use_rslora honoured as in LoRA).
    Conventions: the norm is per output row (dim=1 of (d_out, d_in)); the bias is NOT scaled.
    ``detach_norm=True`` (default) follows §4.3 and peft: the norm is a constant for the gradient
    (values unchanged). Pass False for the fully differentiated formula.
    """
    V = f64(W) + lowrank_scaling(cfg, allow_rslora=True) * (f64(state["B"]) @ f64(state["A"]))
    n = row_norm(V)
    if detach_norm:
        n = n.detach()
    m = f64(state["m"]).reshape(-1)
    return (m / n).unsqueeze(1) * V, f64(b)


def forward(x, W, b, state, cfg, *, detach_norm: bool = True):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg, detach_norm=detach_norm))


def magnitude_error(W: torch.Tensor, state: dict, cfg: dict) -> float:
    """max |‖W_eff‖_row − m| (DoRA's magnitude/direction split, arXiv:2402.09353 §4.1)."""
    W_eff, _ = merged(W, None, state, cfg)
    return float((row_norm(W_eff) - f64(state["m"]).reshape(-1)).abs().max())


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in), B (d_out, r), m (d_out)."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r), "m": (d_out,)}
