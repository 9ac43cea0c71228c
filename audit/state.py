"""Adapter state helpers for the checks: read, perturb (seeded), and probe effective weights."""
from __future__ import annotations

import torch
from torch import nn

import variants


def layer_states(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {tensor name: tensor}} for every adapted layer (live tensors, not copies)."""
    st = variants.state_of(model)
    return {name: variants.adapter_tensors(mod) for name, mod in st.targets.items()}


def perturb(model: nn.Module, seed: int, stds: dict[str, float] | None = None, rel: float = 0.1,
            absolute: float = 0.02) -> None:
    """Move every trainable adapter tensor to a seeded non-trivial state (in place).

    Each tensor t gets t + σ·N(0, 1) with σ = stds[name] if the card gives one, else rel·rms(t),
    or ``absolute`` where t is all zero (e.g. LoRA's B), so the state is away from identity.
    """
    stds = stds or {}
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for name, tensors in layer_states(model).items():
            for tname, t in tensors.items():
                if not t.requires_grad:
                    continue
                rms = float(t.double().pow(2).mean().sqrt())
                sigma = stds.get(tname, rel * rms if rms > 0 else absolute)
                t.add_((torch.randn(t.shape, generator=g, dtype=torch.float64) * sigma).to(t.device, t.dtype))


def snapshot(model: nn.Module, with_weight: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """Detached copies {module name: {tensor name: tensor}}; ``with_weight`` adds the live base
    weight as "weight" (W_res of the variants that mutate it)."""
    out = {}
    for name, tensors in layer_states(model).items():
        out[name] = {k: v.detach().clone() for k, v in tensors.items()}
        if with_weight:
            out[name]["weight"] = variants.state_of(model).targets[name].weight.detach().clone()
    return out


def capture(model: nn.Module, names: list[str], run) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], object]:
    """Run ``run()``; return ({name: (input, output)} of the named modules (their last call), run's result).

    The input is taken before any adapter pre-hook (prepended pre-hook) and the output after every
    adapter forward hook, so (input, output) is what the adapted layer maps.
    """
    mods = dict(model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        handles.append(mods[n].register_forward_pre_hook(
            lambda m, args, _n=n: inputs.__setitem__(_n, args[0].detach()), prepend=True))
        handles.append(mods[n].register_forward_hook(
            lambda m, args, out, _n=n: outputs.__setitem__(_n, out.detach())))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return {n: (inputs[n], outputs[n]) for n in names if n in inputs}, result
