"""attach / detach: hook a variant onto the target layers of any nn.Module (HF models included).

What attach records (``AdapterState``, ``state_of``, the layers' adapter tensors) lives in ``_state``, which
``_control`` and the variants use without importing this module; its names are importable from here too.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from torch import nn

from ._base import PREFIX, Variant
from ._config import AdapterConfig
from ._control import enable, unmerge
from ._layers import features, is_conv1d
from ._registry import REGISTRY
from ._state import ACTIVE_ATTR, STATE_ATTR, AdapterState, allocate, refresh_active, remove_tensors, state_of
from ._targets import select_targets_explained


class _OutputHook:
    """The forward hook ``attach`` registers: y ← variant.forward(layer, x, y) while the layer's
    adapter is active. A class rather than a closure so that an adapted model pickles."""

    def __init__(self, variant: Variant):
        self.variant = variant

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor):
        if module.__dict__.get(ACTIVE_ATTR, True):
            return self.variant.forward(module, args[0], out)
        return None


class _InputHook:
    """The forward pre-hook ``attach`` registers for input-side variants: x ← variant.forward_input."""

    def __init__(self, variant: Variant):
        self.variant = variant

    def __call__(self, module: nn.Module, args: tuple):
        if module.__dict__.get(ACTIVE_ATTR, True):
            return (self.variant.forward_input(module, args[0]), *args[1:])
        return None


class _GuardedSavePretrained:
    """``model.save_pretrained`` while a base-rewriting adapter (PiSSA, OLoRA, AntiPaSTO) is attached and
    not merged: the checkpoint would hold W_res, and the adapter keys a plain ``from_pretrained`` drops as
    unexpected, so the reloaded model would be neither the base nor the adapted one. Refused, saying
    what to do; merged, the weights are the adapted model's and it saves as usual."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        st = getattr(self.model, STATE_ATTR, None)
        if st is not None and not st.merged:
            raise RuntimeError(f"save_pretrained with {st.variant.name!r} attached would write its residual weights "
                               "(W_res) without the adapter a plain from_pretrained can load: call "
                               "variants.merge(model) first to save the adapted model as an ordinary checkpoint, or "
                               "variants.save(model, path) to save the adapter (load it with variants.load)")
        if "state_dict" not in kwargs:  # merged: the plain model's tensors, without the (now idle) adapter's
            kwargs["state_dict"] = {k: v for k, v in self.model.state_dict().items()
                                    if not k.rpartition(".")[2].startswith(PREFIX)}
        return type(self.model).save_pretrained(self.model, *args, **kwargs)


class _AdapterRepr:
    """An adapted layer's ``extra_repr``: the layer's own, then the adapter (variant, rank, state)."""

    def __init__(self, layer: nn.Module, variant: Variant):
        self.layer, self.variant = layer, variant

    def __call__(self) -> str:
        layer = self.layer
        own = type(layer).extra_repr(layer)
        rank = getattr(layer, "adapter_rank", None)
        state = "" if layer.__dict__.get(ACTIVE_ATTR, True) else ", inactive (disabled or merged)"
        return f"{own + ', ' if own else ''}adapter={self.variant.name}(r={rank}{state})"


def adapter_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """{short name: tensor} of one adapted layer (parameters and buffers)."""
    out = {n[len(PREFIX):]: t for n, t in layer.named_parameters(recurse=False) if n.startswith(PREFIX)}
    out.update({n[len(PREFIX):]: t for n, t in layer.named_buffers(recurse=False) if n.startswith(PREFIX)})
    return out


def _validate(model: nn.Module, cfg: AdapterConfig, v: Variant, calibration_data: Any,
              needs_data: bool) -> tuple[dict[str, nn.Module], dict[str, tuple[str, ...]]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, v.Config):
        raise TypeError(f"cfg must be a {v.Config.__name__} for variant {v.name!r}, got {type(cfg).__name__}")
    existing = getattr(model, STATE_ATTR, None)
    if existing is not None:
        raise RuntimeError(f"an adapter ({existing.variant.name!r}) is already attached to this model; "
                           "call variants.detach(model) before attaching another")
    if needs_data and v.needs_calibration and calibration_data is None:
        raise ValueError(f"variant {v.name!r} needs calibration_data (an iterable of model inputs) "
                         "for its data-driven init")
    targets, extra = select_targets_explained(model, cfg, v.default_roles)
    for name, mod in targets.items():
        if v.needs_dense_weight and not (isinstance(mod, nn.Linear) or is_conv1d(mod)):
            raise TypeError(f"variant {v.name!r} decomposes the dense weight and needs nn.Linear or Conv1D; "
                            f"module {name!r} is {type(mod).__name__}")
        v.check_layer(name, mod, *features(mod), cfg)
    return targets, extra


def attach(model: nn.Module, cfg: AdapterConfig, calibration_data: Iterable[Any] | None = None, *,
           variant: type[Variant] | None = None, _init: bool = True,
           _ranks: dict[str, int] | None = None) -> nn.Module:
    """Attach the variant named by ``cfg`` (or the given ``variant`` class) to ``model`` in place.

    Base parameters are frozen; only adapter tensors are trainable. Returns the model.
    ``calibration_data``: an iterable of model inputs (tensors, tuples of positional args, or dicts
    of keyword args) for data-driven inits (EVA; optional for AntiPaSTO's direction selection).
    """
    if not isinstance(cfg, AdapterConfig):
        raise TypeError(f"cfg must be an adapter config from variants.config(...), got {type(cfg).__name__}")
    if variant is None:
        if cfg.variant not in REGISTRY:
            raise ValueError(f"unknown variant {cfg.variant!r}; known: {sorted(REGISTRY)}")
        variant = REGISTRY[cfg.variant]
    v = variant(cfg)
    targets, extra = _validate(model, cfg, v, calibration_data, needs_data=_init)
    if extra and _init:  # a checkpoint being loaded was attached (and warned about) when it was made
        shown = "; ".join(f"{n} also computes {'/'.join(r)}" for n, r in list(extra.items())[:3])
        warnings.warn(f"{v.name}: fused layers are adapted as one layer, beyond the roles asked for "
                      f"({len(extra)} layers: {shown}{' ...' if len(extra) > 3 else ''}); "
                      "use target_names/exclude_names to choose layers by name", stacklevel=2)
    if _ranks is not None:  # a checkpoint records rank 0 for layers a data-driven init dropped
        targets = {n: m for n, m in targets.items() if _ranks.get(n, cfg.r) != 0}

    st = AdapterState(variant=v, cfg=cfg, targets=targets,
                      fused_extra={n: r for n, r in extra.items() if n in targets})
    setattr(model, STATE_ATTR, st)
    try:
        for pname, prm in model.named_parameters():
            st.requires_grad[pname] = prm.requires_grad
            prm.requires_grad_(False)
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            for name, mod in targets.items():
                if v.mutates_base_weight:
                    st.original_weights[name] = mod.weight.detach().clone()  # stored layout, restored as is
                allocate(mod, v, cfg, (_ranks or {}).get(name, cfg.r))
                if _init:
                    v.init(mod, cfg, gen)
        if _init:
            selected = list(targets)
            v.group_init(model, targets, cfg, calibration_data)
            st.dropped = [n for n in selected if n not in targets]
        for mod in targets.values():
            st.handles.append(_register_hook(mod, v))
            mod.__dict__["extra_repr"] = _AdapterRepr(mod, v)
        refresh_active(st)
        if v.mutates_base_weight and callable(getattr(type(model), "save_pretrained", None)):
            model.__dict__["save_pretrained"] = _GuardedSavePretrained(model)
    except BaseException:
        detach(model)
        raise
    return model


def _register_hook(mod: nn.Module, v: Variant):
    if v.hook == "output":
        return mod.register_forward_hook(_OutputHook(v))
    if v.hook == "input":
        return mod.register_forward_pre_hook(_InputHook(v))
    raise ValueError(f"variant {v.name!r}: hook must be 'output' or 'input', got {v.hook!r}")


def detach(model: nn.Module) -> nn.Module:
    """Remove the adapter: hooks, adapter tensors; restore mutated base weights and requires_grad."""
    st = state_of(model)
    if st.merged:  # the weights before the merge (W_res for a mutating variant) first
        unmerge(model)
    if st.disabled:  # a rewritten weight holds the original while disabled: put W_res back first
        enable(model)
    for h in st.handles:
        h.remove()
    with torch.no_grad():
        for name, mod in st.targets.items():
            remove_tensors(mod)
            for attr in (ACTIVE_ATTR, "extra_repr"):
                mod.__dict__.pop(attr, None)
            if name in st.original_weights:
                mod.weight.copy_(st.original_weights[name])
    params = dict(model.named_parameters())
    for pname, flag in st.requires_grad.items():
        if pname in params:
            params[pname].requires_grad_(flag)
    model.__dict__.pop("save_pretrained", None)
    delattr(model, STATE_ATTR)
    return model


def named_adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{state-dict name: parameter} of every trainable adapter tensor ('…q_proj.adapter_A'); frozen
    adapter tensors (buffers: VeRA's shared projections, DeLoRA's frozen copies) are not included; a parameter
    several layers share (VB-LoRA's bank) is listed once, under the first layer holding it."""
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mname, mod in state_of(model).targets.items():
        for pname, p in mod.named_parameters(recurse=False):
            if pname.startswith(PREFIX) and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out[f"{mname}.{pname}" if mname else pname] = p
    return out


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters, what an optimiser takes: ``AdamW(adapter_parameters(model))``."""
    return list(named_adapter_parameters(model).values())
