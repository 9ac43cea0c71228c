"""DeLoRA's forward keeps no more for backward than it must (variants/delora.py: Delora.forward).

On a bfloat16 model with a float32 adapter, x is cast to a fresh float32 copy anyway: it is scaled by
the weight norm in place, so autograd saves that copy and A itself, as peft does, and not also a
scaled (r, d_in) copy of A (which kept 0.59 MB more than peft at bench size in bfloat16). On a
same-dtype model the (r, d_in) factor is scaled instead, so that x is not copied at all.
"""
from __future__ import annotations

import torch

import variants
from audit import models


def _saved(model, ids) -> list[torch.Tensor]:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        models.logits(model, ids)
    return saved


def test_a_float32_adapter_on_bfloat16_keeps_no_scaled_copy_of_a():
    model = models.build("qwen3", dtype=torch.bfloat16)
    variants.attach(model, variants.config("delora", r=4, dtype="float32", init_style="peft"))
    model.get_input_embeddings().weight.requires_grad_(True)
    layers = variants.state_of(model).targets.values()
    params = {p.data_ptr() for layer in layers for p in (layer.adapter_A, layer.adapter_B)}  # B.t() may match A's size
    size_a = {layer.adapter_A.numel() for layer in layers}  # either orientation (mm keeps a transposed view)
    kept = [t for t in _saved(model, models.example_inputs(model, seed=1)) if t.is_floating_point() and t.numel() in size_a]
    assert kept and all(t.data_ptr() in params for t in kept), "a scaled copy of A is kept for backward"
