"""Using an attached adapter: merge it into the weights and back, switch it off and on, and count it.

    variants.merge(model)      # W ← W_eff, b ← b_eff of every adapted layer; the hooks stand aside
    variants.unmerge(model)    # the weights before the merge, bit for bit
    with variants.disabled(model): ...   # the base model's outputs, the adapter kept
    print(variants.summary(model))

Merge writes what each layer's ``Variant.merged_weights`` gives: by default its effective weight and
bias read off the hooked layer itself (``variants.effective_affine``, in ``_affine``). Unmerge restores
the weights saved at merge time, so it is exact (W_eff − ΔW rounds).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ._base import PREFIX
from ._layers import dense_weight
from ._state import refresh_active, state_of


def merge(model: nn.Module) -> nn.Module:
    """Write each adapted layer's effective weight and bias into the layer (the hooks then stand aside):
    inference at the base model's cost. Refused when already merged (merging twice would add ΔW twice)
    or disabled; ``save`` is refused while merged (the stored weights would be the merged ones)."""
    st = state_of(model)
    if st.merged:
        raise RuntimeError("the adapter is already merged; call variants.unmerge(model) first")
    if st.disabled:
        raise RuntimeError("the adapter is disabled: there is nothing to merge; call variants.enable(model) first")
    effective = {name: st.variant.merged_weights(mod) for name, mod in st.targets.items()}
    with torch.no_grad():
        for name, mod in st.targets.items():
            w_eff, b_eff = effective[name]
            st.merged[name] = (mod.weight.detach().clone(), None if mod.bias is None else mod.bias.detach().clone())
            dense_weight(mod).copy_(w_eff)
            if b_eff is not None:
                mod.bias.copy_(b_eff)
    refresh_active(st)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Put back the weights and biases saved by ``merge``, bit for bit, and the hooks to work."""
    st = state_of(model)
    if not st.merged:
        raise RuntimeError("the adapter is not merged (variants.merge(model) merges it)")
    with torch.no_grad():
        for name, (weight, bias) in st.merged.items():
            mod = st.targets[name]
            mod.weight.copy_(weight)
            if bias is not None:
                mod.bias.copy_(bias)
    st.merged.clear()
    refresh_active(st)
    return model


def is_merged(model: nn.Module) -> bool:
    return bool(state_of(model).merged)


def disable(model: nn.Module) -> nn.Module:
    """The base model's outputs until ``enable``: every hook passes the base output through (the
    adapter tensors are kept). Refused while merged: the weights themselves hold the adapter."""
    st = state_of(model)
    if st.merged:
        raise RuntimeError("the adapter is merged into the weights; call variants.unmerge(model) before disabling it")
    if not st.disabled:
        _swap_original_weights(st)  # a variant that rewrote W (PiSSA's W_res): the base's own W while disabled
        st.disabled = True
    refresh_active(st)
    return model


def enable(model: nn.Module) -> nn.Module:
    st = state_of(model)
    if st.disabled:
        _swap_original_weights(st)
        st.disabled = False
    refresh_active(st)
    return model


def _swap_original_weights(st) -> None:
    """Exchange each rewritten layer weight with the original kept at attach (both in stored layout)."""
    with torch.no_grad():
        for name, original in st.original_weights.items():
            w = st.targets[name].weight
            live = w.detach().clone()
            w.copy_(original)
            original.copy_(live)


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``with variants.disabled(model):`` the base model's outputs inside, the adapter's after (also
    when the block raises); a model that was disabled before stays disabled."""
    was = state_of(model).disabled
    disable(model)
    try:
        yield model
    finally:
        if not was:
            enable(model)


def summary(model: nn.Module) -> str:
    """One line: the variant and its size, trainable parameters against all, and whether it is merged
    or disabled (peft's print_trainable_parameters, plus what is attached)."""
    st = state_of(model)
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    buffers = {id(b): b for mod in st.targets.values() for n, b in mod.named_buffers(recurse=False)
               if n.startswith(PREFIX)}  # by identity: VeRA's one shared pair sits on every layer
    frozen_adapter = sum(b.numel() for b in buffers.values())
    ranks = sorted({getattr(m, "adapter_rank", None) for m in st.targets.values()} - {None})
    state = " (merged)" if st.merged else " (disabled)" if st.disabled else ""
    return (f"{st.variant.name}{state} on {len(st.targets)} layers, rank {'/'.join(map(str, ranks)) or '-'}: "
            f"trainable params {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.4f}%)"
            + (f"; {frozen_adapter:,} frozen adapter values in buffers" if frozen_adapter else ""))
