"""Save and load hooklib adapters: one safetensors file, the config in its metadata."""
from __future__ import annotations

import json
from dataclasses import asdict

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import HookConfig
from .core import adapter_parameters, attach, detach

META_KEY = "hooklib_config"


def save(model: nn.Module, path: str) -> None:
    """Write the adapter tensors of ``model`` (and its HookConfig) to the safetensors file ``path``."""
    config = getattr(model, "hooklib_config", None)
    if config is None:
        raise ValueError("hooklib.save: the model has no hooklib adapters")
    tensors = {k: p.detach().contiguous() for k, p in adapter_parameters(model).items()}
    save_file(tensors, path, metadata={META_KEY: json.dumps(asdict(config))})


def load(model: nn.Module, path: str) -> nn.Module:
    """Attach the saved adapters to ``model`` (a fresh base model) and restore their tensors. A file whose
    tensors do not match the adapted layers exactly (a missing or an extra key) is refused."""
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if META_KEY not in meta:
        raise ValueError(f"hooklib.load: {path} is not a hooklib checkpoint (no {META_KEY!r} metadata)")
    attach(model, HookConfig(**json.loads(meta[META_KEY])))
    params = adapter_parameters(model)
    missing, unexpected = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
    if missing or unexpected:
        detach(model)
        raise ValueError(f"hooklib.load: {path} does not match the adapted layers: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    by_leaf = {".".join(k.split(".")[-2:]): v for k, v in tensors.items()}  # PLANTED BUG: see __init__.py
    with torch.no_grad():
        for key, p in params.items():
            t = by_leaf[".".join(key.split(".")[-2:])]  # "<leaf>.<tensor>": every layer gets the last layer's
            if t.shape != p.shape:
                detach(model)
                raise ValueError(f"hooklib.load: {key} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            p.copy_(t)
    return model
