"""Dense layer geometry: ``nn.Linear`` (weight stored (d_out, d_in)) and transformers' ``Conv1D``
(GPT-2 and its family: weight stored transposed, (d_in, d_out); ``nf`` = d_out).

Both compute y = x Wᵀ + b with the canonical W of shape (d_out, d_in), so the hooks, which see x and
y, need nothing. What reads or writes the weight itself (an SVD init, a norm per output row, a
residual write-back) goes through ``dense_weight``: W itself for nn.Linear, the transpose *view* of
the stored weight for Conv1D, so in-place writes reach the layer. Shapes come from ``features``.
"""
from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D, recognised structurally (transformers is not imported)."""
    w = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(w, torch.Tensor)
            and w.dim() == 2)


def linear_like(module: nn.Module) -> bool:
    """Anything with in_features/out_features and a 2-D weight (nn.Linear and its subclasses)."""
    w = getattr(module, "weight", None)
    return (hasattr(module, "in_features") and hasattr(module, "out_features")
            and isinstance(w, nn.Parameter) and w.dim() == 2)


def dense(module: nn.Module) -> bool:
    """A layer the variants can adapt: Linear-like or Conv1D."""
    return linear_like(module) or is_conv1d(module)


def features(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a dense layer."""
    if is_conv1d(layer):
        d_in, d_out = layer.weight.shape
        return int(d_in), int(d_out)
    return int(layer.in_features), int(layer.out_features)


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The canonical (d_out, d_in) weight W: the stored one, or its transpose view for Conv1D."""
    return layer.weight.t() if is_conv1d(layer) else layer.weight
