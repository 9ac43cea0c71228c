"""The effective weight and bias of one adapted layer, read off the hooked layer itself.

Every variant here is affine in the layer input (y = x W_effᵀ + b_eff), so b_eff is its output on a zero
input and W_effᵀ its output on the identity matrix with the base bias set to zero, less what an adapter
bias still adds there (peft's lora_bias). This is
``Variant.merged_weights``'s default, and so what ``variants.merge`` writes into the layer: one code path
merges every variant (a paper-specific merge formula per method would be sixteen places for the bugs
peft's history shows: a bias merged without its scale, a transposed ΔW); the audit's ``merge`` check
compares the result with the paper's merged weights.

This module needs only the layer geometry (``_layers``), so the variant protocol (``_base``) can use it
without importing the runtime.
"""
from __future__ import annotations

import torch
from torch import nn

from ._layers import dense_weight, features

CHUNK = 1024  # identity rows per probe forward: bounds the probe's memory on wide layers


def effective_affine(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_eff in canonical (d_out, d_in) layout, b_eff or None) of one adapted layer as its hooks
    compute it, in eval mode (no dropout), in the layer's dtype."""
    d_in, d_out = features(layer)
    w = dense_weight(layer)
    bias = getattr(layer, "bias", None)
    training = layer.training
    layer.eval()
    saved = None if bias is None else bias.detach().clone()
    try:
        with torch.no_grad():
            b_eff = layer(torch.zeros(1, d_in, dtype=w.dtype, device=w.device))[0]
            if bias is not None:
                bias.zero_()
            # what the adapter adds on a zero input besides the base bias (peft's lora_bias): 0 for most
            own = layer(torch.zeros(1, d_in, dtype=w.dtype, device=w.device))[0]
            rows = []
            for start in range(0, d_in, CHUNK):
                n = min(CHUNK, d_in - start)
                probe = torch.zeros(n, d_in, dtype=w.dtype, device=w.device)
                probe[torch.arange(n), torch.arange(start, start + n)] = 1
                out = layer(probe)
                rows.append(out - own if own.any() else out)
            w_eff = torch.cat(rows).t().contiguous()
    finally:
        if bias is not None:
            with torch.no_grad():
                bias.copy_(saved)
        layer.train(training)
    if bias is None:
        if b_eff.any():
            raise RuntimeError(f"the adapter adds a bias to a layer without one ({type(layer).__name__}, "
                               f"{d_in}→{d_out}): it cannot be merged into the layer's weights")
        return w_eff, None
    return w_eff, b_eff
