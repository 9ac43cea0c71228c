"""Adapter state helpers for the checks: perturb a subject's state (seeded) and capture layer I/O."""
from __future__ import annotations

import torch
from torch import nn

from .subjects import Adapted


def perturb(adapted: Adapted | nn.Module, seed: int, stds: dict[str, float] | None = None, rel: float = 0.1,
            absolute: float = 0.02) -> None:
    """Move every trainable adapter tensor to a seeded non-trivial state (in place, canonical layout).

    Each tensor t gets t + σ·N(0, 1) with σ = stds[name] if the card gives one, else rel·rms(t),
    or ``absolute`` where t is all zero (e.g. LoRA's B), so the state is away from identity.
    """
    if not isinstance(adapted, Adapted):  # a model our runtime adapted
        from .subjects.ours import ours_handle
        adapted = ours_handle(adapted)
    stds = stds or {}
    g = torch.Generator().manual_seed(seed + 12345)
    new = {}
    for name, tensors in adapted.state().items():
        new[name] = {}
        for tname, t in tensors.items():
            if not adapted.slots[name][tname].trainable:
                continue
            new[name][tname] = t + _noise(t, g, stds.get(tname, _sigma(t, rel, absolute)))
    adapted.set_state(new)


def _sigma(t: torch.Tensor, rel: float, absolute: float) -> float:
    """rel·rms(t), or ``absolute`` where t is all zero."""
    rms = float(t.double().pow(2).mean().sqrt())
    return rel * rms if rms > 0 else absolute


def _noise(t: torch.Tensor, g: torch.Generator, sigma: float) -> torch.Tensor:
    """σ·N(0, 1) of t's shape, drawn in float64 from ``g``, in t's dtype and device."""
    return (torch.randn(t.shape, generator=g, dtype=torch.float64) * sigma).to(t.device, t.dtype)


def perturb_raw(adapted: Adapted, seed: int, rel: float = 0.1, absolute: float = 0.02) -> None:
    """``perturb`` in the subject's own layout, for a subject whose canonical state cannot be read (a layout
    finding): every trainable tensor of the adapted model t + σ·N(0, 1), σ = rel·rms(t) (``absolute`` where
    t is all zero), so the checks that read only outputs and base weights (merge, save/load) still run away
    from identity."""
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for p in adapted.parameters():  # the model's and those the subject keeps outside it, in a fixed order
            p.add_(_noise(p, g, _sigma(p, rel, absolute)))


def capture(modules, run) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], object]:
    """Run ``run()``; return ({name: (input, output)} of the given modules (their last call), run's result).

    The input is taken before any adapter pre-hook (prepended pre-hook) and the output after every
    adapter forward hook, so (input, output) is what the adapted layer maps. ``modules``: {name: module},
    or an Adapted handle: then each adapted layer is hooked and, where the subject computes the adapted
    output without calling that module (a library that patches the base layer's forward and calls its
    own adapter module directly), its base layer, whose call then returns the adapted output.
    """
    if hasattr(modules, "base_layer") and hasattr(modules, "layers"):
        handle = modules
        tiers = [handle.layers, {n: handle.base_layer(n) for n in handle.names}]
    else:
        tiers = [modules]
    seen: list[dict[str, list]] = [{} for _ in tiers]
    handles = []
    for tier, record in zip(tiers, seen):
        for n, mod in tier.items():
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, _n=n, _r=record: _r.__setitem__(_n, [args[0].detach(), None]), prepend=True))
            handles.append(mod.register_forward_hook(
                lambda m, args, out, _n=n, _r=record: _r[_n].__setitem__(1, out.detach()) if _n in _r else None))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in tiers[0]:
        got = next((r[n] for r in seen if n in r and r[n][1] is not None), None)
        if got is not None:
            out[n] = (got[0], got[1])
    return out, result


def modules_named(model: nn.Module, names) -> dict[str, nn.Module]:
    """{name: module} of ``model`` for the given dotted names."""
    mods = dict(model.named_modules())
    return {n: mods[n] for n in names}
