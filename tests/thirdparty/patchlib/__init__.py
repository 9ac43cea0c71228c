"""patchlib: LoRA without touching the model's modules or its state dict.

    adapters = patchlib.attach(model, ["model.layers.0.self_attn.q_proj", ...], rank=8, alpha=16.0)

Each chosen layer's ``forward`` is replaced by an instance attribute computing x Wᵀ + b + (alpha/rank)·(x Aᵀ) Bᵀ;
A (rank, d_in) and B (d_out, rank) live in an ``Adapters`` module that is *not* registered in the model (so
``model.parameters()`` has none of them: optimise ``adapters.parameters()``). Works on nn.Linear and transformers'
Conv1D (weight stored (d_in, d_out)). A is kaiming-uniform, B = 0.
"""
from __future__ import annotations

import math
import weakref

import torch
from safetensors.torch import load_file, save_file
from torch import nn

# model -> its adapters, weakly: models are not kept alive here, and a new model at a freed model's address
# is not mistaken for it (an id-keyed dict would be)
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, Adapters]" = weakref.WeakKeyDictionary()


class Adapters(nn.Module):
    """Every adapted layer's A and B, keyed by the layer's name with dots as '__'."""

    def __init__(self, rank: int, alpha: float):
        super().__init__()
        self.rank, self.alpha = rank, alpha
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()

    @property
    def names(self) -> list[str]:
        return [k.replace("__", ".") for k in self.A]

    def layer(self, name: str) -> nn.Module:
        """A view of one layer's pair as attributes A and B."""
        key = name.replace(".", "__")
        view = nn.Module()
        view.A, view.B = self.A[key], self.B[key]
        return view


def _dims(layer: nn.Module) -> tuple[int, int, bool]:
    conv1d = type(layer).__name__ == "Conv1D"
    d_in, d_out = (layer.weight.shape if conv1d else layer.weight.shape[::-1])
    return d_in, d_out, conv1d


def attach(model: nn.Module, targets: list[str], *, rank: int, alpha: float, seed: int = 0,
           dtype: str = "float32") -> Adapters:
    if model in _ATTACHED:
        raise RuntimeError("patchlib.attach: this model already has patchlib adapters")
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"patchlib.attach: rank must be an int, got {rank!r}")
    if rank <= 0:
        raise ValueError(f"patchlib.attach: rank must be positive, got {rank}")
    if not targets:
        raise ValueError("patchlib.attach: no target layers given")
    ad = Adapters(rank, float(alpha))
    model.requires_grad_(False)  # the base is frozen; only the adapters train
    gen = torch.Generator().manual_seed(seed)
    for name in targets:
        layer = model.get_submodule(name)
        d_in, d_out, conv1d = _dims(layer)
        key = name.replace(".", "__")
        a = (torch.rand(rank, d_in, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(d_in)
        ad.A[key] = nn.Parameter(a.to(getattr(torch, dtype)))
        ad.B[key] = nn.Parameter(torch.zeros(d_out, rank, dtype=getattr(torch, dtype)))
        layer.forward = _patched(layer, ad, key, conv1d)
    _ATTACHED[model] = ad
    return ad


def _patched(layer: nn.Module, ad: Adapters, key: str, conv1d: bool):
    def forward(x: torch.Tensor) -> torch.Tensor:
        w = layer.weight.t() if conv1d else layer.weight
        y = nn.functional.linear(x, w, layer.bias)
        a, b = ad.A[key], ad.B[key]
        return y + ((ad.alpha / ad.rank) * ((x.to(a.dtype) @ a.t()) @ b.t())).to(y.dtype)
    return forward


def adapters(model: nn.Module) -> Adapters:
    if model not in _ATTACHED:
        raise ValueError("patchlib: the model has no patchlib adapters")
    return _ATTACHED[model]


def save(model: nn.Module, path: str) -> None:
    ad = adapters(model)
    tensors = {f"{k}.{p}": t.detach().contiguous() for p in ("A", "B") for k, t in getattr(ad, p).items()}
    save_file(tensors, path, metadata={"rank": str(ad.rank), "alpha": str(ad.alpha)})


def load(model: nn.Module, path: str) -> Adapters:
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    names = sorted({k.rsplit(".", 1)[0].replace("__", ".") for k in tensors})
    ad = attach(model, names, rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    want = {f"{k}.{p}" for p in ("A", "B") for k in getattr(ad, p)}
    if set(tensors) != want:
        raise ValueError(f"patchlib.load: {path} does not match: missing {sorted(want - set(tensors))[:3]}, "
                         f"unexpected {sorted(set(tensors) - want)[:3]}")
    with torch.no_grad():
        for k, t in tensors.items():
            key, p = k.rsplit(".", 1)
            getattr(ad, p)[key].copy_(t)
    return ad
