"""The adapter state of a model and of its adapted layers: what ``attach`` recorded (``AdapterState``,
found with ``state_of``), each adapted layer's adapter tensors (``allocate``, ``remove_tensors``) and the
per-layer flag the hooks read (``refresh_active``).

Attach and detach (``_runtime``), merge and disable (``_control``), save and load, and the variants whose
init reads or resizes the state (AdaLoRA, EVA, AntiPaSTO) all use it; it imports none of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._base import PREFIX, Variant
from ._config import AdapterConfig
from ._layers import features, is_conv1d

STATE_ATTR = "_adapter_audit_state"


@dataclass
class AdapterState:
    """What attach did to a model, so detach/save/load can undo or persist it."""

    variant: Variant
    cfg: AdapterConfig
    targets: dict[str, nn.Module]
    handles: list[Any] = field(default_factory=list)
    original_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # selected, then removed by group_init (EVA rank 0)
    requires_grad: dict[str, bool] = field(default_factory=dict)
    fused_extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fused targets: roles adapted beyond those asked
    disabled: bool = False  # variants.disable: every hook passes the base output through
    merged: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)  # name: (weight, bias) before merge

    def original_weight(self, name: str) -> torch.Tensor:
        """The base weight of target ``name`` before a mutating init, canonical (d_out, d_in) layout."""
        w = self.original_weights[name]
        return w.t() if is_conv1d(self.targets[name]) else w


def state_of(model: nn.Module) -> AdapterState:
    st = getattr(model, STATE_ATTR, None)
    if st is None:
        raise RuntimeError("no adapter is attached to this model (call variants.attach first)")
    return st


def adapter_dtype(layer: nn.Module, cfg: AdapterConfig) -> torch.dtype:
    return getattr(torch, cfg.dtype) if cfg.dtype else layer.weight.dtype


def allocate(layer: nn.Module, variant: Variant, cfg: AdapterConfig, r: int) -> None:
    """(Re)create the adapter tensors of one layer at rank r, zero-filled, from param_specs."""
    remove_tensors(layer)
    dev, dt = layer.weight.device, adapter_dtype(layer, cfg)
    for pname, spec in variant.param_specs(*features(layer), r, cfg).items():
        t = torch.zeros(spec.shape, device=dev, dtype=spec.dtype or dt)
        if spec.trainable:
            layer.register_parameter(PREFIX + pname, nn.Parameter(t))
        else:
            layer.register_buffer(PREFIX + pname, t, persistent=True)
    layer.adapter_rank = r


def remove_tensors(layer: nn.Module) -> None:
    for pname in [n for n, _ in layer.named_parameters(recurse=False) if n.startswith(PREFIX)]:
        delattr(layer, pname)
    for bname in [n for n, _ in layer.named_buffers(recurse=False) if n.startswith(PREFIX)]:
        delattr(layer, bname)
    layer.__dict__.pop("adapter_rank", None)


ACTIVE_ATTR = "adapter_active"  # per adapted layer: False while the adapter is disabled or merged


def refresh_active(st: AdapterState) -> None:
    """Set each adapted layer's flag: the hooks act only while not disabled and not merged. The flag
    lives on the layer (a plain bool), so a deep copy of the model carries its own."""
    for name, mod in st.targets.items():
        mod.__dict__[ACTIVE_ATTR] = not st.disabled and name not in st.merged
