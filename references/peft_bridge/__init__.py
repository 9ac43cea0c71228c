"""peft bridge: build the peft counterpart of an adapter state and read peft's tensors back.

An adapter state is the canonical per-layer dict of references/STATE_LAYOUT.md ({module name: {canonical name:
tensor}}). `build_peft_model` deep-copies a base model, wraps exactly the given layers with the equivalent peft
config, and copies the state in with the layout mapping applied; `peft_state` is the inverse. The mapping for
each variant is plain data in `MAPPINGS` (see `MAPPINGS[v].describe()`), one small module per method:

    lora.py    lora (incl. rsLoRA), pissa, dora, eva    -> peft.LoraConfig
    ia3.py     ia3 (output scaling), ia3_ff (input)     -> peft.IA3Config
    hra.py     hra                                      -> peft.HRAConfig
    delora.py  delora (init_style "peft" only)          -> peft.DeloraConfig
    road.py    road (road_1 / road_2 / road_4)          -> peft.RoadConfig

Adapter dtype: peft moves a new adapter to the base layer's dtype and, with autocast_adapter_dtype=True (its
default), upcasts float16/bfloat16 adapters to float32; it never downcasts. The bridge passes
autocast_adapter_dtype = (cfg["dtype"] == "float32"), so: bf16/fp16 base + "float32" -> float32 adapters
(peft casts x to the adapter dtype and the output back to the base dtype); bf16 base + "bfloat16" or None ->
bf16 adapters; float32/float64 bases -> adapters in the base dtype whatever is asked. What happened is recorded
in `peft_model.bridge_info` (adapter_dtype, adapter_dtype_matches, ...).

This package must never import `variants` (tests enforce it).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch
from torch import nn

import importlib
import pkgutil

from . import _core
from ._core import (ADAPTER, TRANSFORMS, BridgeUnsupported, ConfigField, TensorMap, VariantMapping,
                    adapter_dtype_plan, adapted_module_names, peft_layer, tuner_root)


def _discover() -> dict[str, VariantMapping]:
    """Every VariantMapping defined in this package's method modules (one file per method)."""
    found: dict[str, VariantMapping] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        for obj in vars(importlib.import_module(f"{__name__}.{info.name}")).values():
            if isinstance(obj, VariantMapping):
                if obj.variant in found and found[obj.variant] is not obj:
                    raise RuntimeError(f"peft bridge: variant {obj.variant!r} mapped twice")
                found[obj.variant] = obj
    return found


MAPPINGS: dict[str, VariantMapping] = _discover()
PEFT_VARIANTS: tuple[str, ...] = tuple(MAPPINGS)


def _mapping(variant: str) -> VariantMapping:
    try:
        return MAPPINGS[variant]
    except KeyError:
        raise BridgeUnsupported(f"peft has no counterpart for variant {variant!r} in this bridge; "
                                f"supported: {PEFT_VARIANTS}") from None


def build_peft_model(base_model: nn.Module, variant: str, cfg: Mapping[str, Any],
                     target_module_names: list[str] | tuple[str, ...],
                     states: Mapping[str, Mapping[str, torch.Tensor]],
                     copy_model: Callable[[nn.Module], nn.Module] = copy.deepcopy) -> nn.Module:
    """peft counterpart of an adapter state, on a deep copy of `base_model` (which is never mutated).

    variant              one of PEFT_VARIANTS
    cfg                  our config fields as a plain dict (r, alpha, dtype, use_rslora, road_variant, group_size,
                         lambda0, init_style, rho, ...); missing fields take our defaults
    target_module_names  full dotted module names; exactly these are wrapped (EVA: minus rank-0 layers)
    states               {module name: {canonical name: tensor}}; pissa may add "weight" (W_res, canonical
                         (d_out, d_in) layout) which replaces the peft layer's base_layer.weight

    Returns a peft.PeftModel in eval mode with every dropout 0 and the adapter tensors trainable, plus
    `.bridge_info` (a dict). Raises BridgeUnsupported when peft cannot represent the state (DeLoRA's paper init,
    an unsupported layer type), ValueError/KeyError on missing, unknown or mis-shaped state tensors.
    copy_model           how the base is deep-copied (default copy.deepcopy; a caller with a faster deep
                         copy of its models passes it)
    """
    return _core.build(base_model, _mapping(variant), cfg, target_module_names, states, copy_model)


def peft_state(peft_model: nn.Module, variant: str,
               target_module_names: list[str] | tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """The current peft adapter tensors mapped back to canonical dicts {module name: {canonical name: tensor}}
    (detached clones, in peft's adapter dtype). pissa's entry includes "weight" (the W_res in base_layer.weight);
    delora's includes the frozen "w_norm" buffer."""
    return _core.read(peft_model, _mapping(variant), target_module_names)


def peft_trainable_names(peft_model: nn.Module) -> list[str]:
    """Full names of the parameters peft leaves trainable (requires_grad), in model order."""
    return [n for n, p in peft_model.named_parameters() if p.requires_grad]


def describe_mapping(variant: str) -> str:
    """Markdown description of one variant's mapping (for reports)."""
    return _mapping(variant).describe()


__all__ = [
    "ADAPTER", "BridgeUnsupported", "ConfigField", "MAPPINGS", "PEFT_VARIANTS", "TRANSFORMS", "TensorMap",
    "VariantMapping", "adapted_module_names", "adapter_dtype_plan", "build_peft_model", "describe_mapping",
    "peft_layer", "peft_state", "peft_trainable_names", "tuner_root",
]
