"""Attach, find and detach hooklib adapters: parameters and one forward hook on each adapted nn.Linear."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import HookConfig

PARAMS = {"lora": ("lora_down", "lora_up"), "ia3": ("ia3_scale",)}


def _lora(layer: nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor:
    down, up = layer.lora_down, layer.lora_up
    delta = (args[0].to(down.dtype) @ down.t()) @ up
    return (out.to(delta.dtype) + delta * layer.hooklib_scale).to(out.dtype)


def _ia3(layer: nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return (out * layer.ia3_scale).to(out.dtype)


HOOKS = {"lora": _lora, "ia3": _ia3}


def adapted_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """{full module name: layer} of every layer hooklib adapted, in model order."""
    return {n: m for n, m in model.named_modules() if hasattr(m, "hooklib_method")}


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """{"<module>.<tensor>": parameter} of every adapter tensor (the keys of a saved checkpoint)."""
    return {f"{n}.{p}": getattr(m, p) for n, m in adapted_modules(model).items() for p in PARAMS[m.hooklib_method]}


def attach(model: nn.Module, config: HookConfig) -> nn.Module:
    """Adapt ``model`` in place (its own parameters are frozen) and return it."""
    if not isinstance(config, HookConfig):
        raise TypeError(f"config must be a hooklib.HookConfig, got {type(config).__name__}")
    if adapted_modules(model):
        raise RuntimeError("hooklib: this model already has adapters attached; detach() them first")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and config.selects(n)}
    if not layers:
        what = f"regex={config.regex!r}" if config.regex else f"targets={config.leaves!r}"
        raise ValueError(f"hooklib: no nn.Linear layer of the model matches {what}")
    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(config.seed)
    for layer in layers.values():
        _install(layer, config, gen)
    model.hooklib_config = config
    return model


def _install(layer: nn.Linear, config: HookConfig, gen: torch.Generator) -> None:
    w = layer.weight
    dtype = getattr(torch, config.adapter_dtype) if config.adapter_dtype else w.dtype
    d_out, d_in = w.shape
    if config.method == "lora":
        bound = 1.0 / math.sqrt(d_in)  # kaiming_uniform_(a=√5), the nn.Linear default
        down = torch.empty(config.rank, d_in).uniform_(-bound, bound, generator=gen)
        layer.lora_down = nn.Parameter(down.to(w.device, dtype))
        layer.lora_up = nn.Parameter(torch.zeros(config.rank, d_out, device=w.device, dtype=dtype))
        layer.hooklib_scale = config.scale
    else:
        layer.ia3_scale = nn.Parameter(torch.ones(1, d_out, device=w.device, dtype=dtype))
    layer.hooklib_method = config.method
    layer.hooklib_hook = layer.register_forward_hook(HOOKS[config.method]).id  # an id survives deepcopy


def detach(model: nn.Module) -> nn.Module:
    """Remove every hooklib adapter; the layers compute their original output again."""
    for layer in adapted_modules(model).values():
        layer._forward_hooks.pop(layer.hooklib_hook, None)
        for name in (*PARAMS[layer.hooklib_method], "hooklib_scale", "hooklib_method", "hooklib_hook"):
            if hasattr(layer, name):
                delattr(layer, name)
    if hasattr(model, "hooklib_config"):
        del model.hooklib_config
    return model
