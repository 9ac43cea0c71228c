"""Structural target selection: which modules of a model an adapter config adapts."""
from __future__ import annotations

import re

from torch import nn

from ._config import AdapterConfig

# Module leaf name -> projection role, across common HF decoder families and toy MLPs.
ROLE_BY_LEAF = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "query": "q", "key": "k", "value": "v", "out_proj": "o",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down",
    "w1": "gate", "w3": "up", "w2": "down", "fc1": "up", "fc2": "down",
}
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def role_of(name: str) -> str | None:
    return ROLE_BY_LEAF.get(name.rsplit(".", 1)[-1])


def layer_index(name: str) -> int | None:
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def linear_like(module: nn.Module) -> bool:
    """Anything with in_features/out_features and a 2-D weight (nn.Linear and its subclasses)."""
    w = getattr(module, "weight", None)
    return (hasattr(module, "in_features") and hasattr(module, "out_features")
            and isinstance(w, nn.Parameter | type(None)) and w is not None and w.dim() == 2)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def select_targets(model: nn.Module, cfg: AdapterConfig, default_roles: tuple[str, ...]) -> dict[str, nn.Module]:
    """Return {name: module} of the modules cfg adapts, in model order; raise if none match."""
    roles = cfg.target_roles
    if roles is None and not cfg.target_names:
        roles = default_roles
    names = [re.compile(p) for p in cfg.target_names]
    excludes = [re.compile(p) for p in cfg.exclude_names]
    chosen: dict[str, nn.Module] = {}
    candidates: list[str] = []
    for name, mod in model.named_modules():
        if not name:
            continue
        conv1d = _is_conv1d(mod)
        if not (linear_like(mod) or conv1d):
            continue
        candidates.append(name)
        if names and not any(p.search(name) for p in names):
            continue
        if roles and role_of(name) not in roles:
            continue
        if any(p.search(name) for p in excludes):
            continue
        if cfg.layers is not None and layer_index(name) not in cfg.layers:
            continue
        if conv1d:
            raise TypeError(
                f"module {name!r} is a transformers Conv1D (weight stored transposed as (in, out)); "
                "adapter-audit supports nn.Linear-like layers only: exclude it with exclude_names")
        chosen[name] = mod
    if not chosen:
        shown = ", ".join(candidates[:8]) + (" ..." if len(candidates) > 8 else "")
        raise ValueError(
            f"no target matched: target_names={cfg.target_names}, target_roles={roles}, "
            f"exclude_names={cfg.exclude_names}, layers={cfg.layers}. "
            f"Linear modules in this model: {shown or '(none)'}")
    return chosen
