"""Structural target selection: which modules of a model an adapter config adapts.

A module's projection roles come from its name. Some layers compute several roles at once (fused
projections: Phi-3's ``qkv_proj`` and ``gate_up_proj``, GPT-2's ``c_attn``, Falcon's
``query_key_value``): such a layer is adapted *as one layer* when any of its roles is asked for,
never split and never skipped. Splitting is not an option for every method: an input-side adapter
(HRA's reflections, ia3_ff's scaling) acts on the input the fused roles share, and an SVD init (PiSSA)
of the fused weight is not the SVD of its slices; adapting the fused layer whole is also what peft
does with ``target_modules=["qkv_proj"]``. When a fused layer is adapted for only some of its roles,
``select_targets_explained`` reports the roles adapted beyond those asked for (kept on the adapter
state as ``fused_extra``) and attach warns.
"""
from __future__ import annotations

import re

from torch import nn

from ._config import AdapterConfig
from ._layers import dense, is_conv1d

# Module leaf name -> the projection roles it computes, across common HF decoder families and toy MLPs.
ROLES_BY_LEAF: dict[str, tuple[str, ...]] = {
    "q_proj": ("q",), "k_proj": ("k",), "v_proj": ("v",), "o_proj": ("o",),
    "query": ("q",), "key": ("k",), "value": ("v",), "out_proj": ("o",),
    "gate_proj": ("gate",), "up_proj": ("up",), "down_proj": ("down",),
    "w1": ("gate",), "w3": ("up",), "w2": ("down",), "fc1": ("up",), "fc2": ("down",), "c_fc": ("up",),
    # T5 (SelfAttention / EncDecAttention .q .k .v .o; DenseReluDense .wi, or .wi_0 gate and .wi_1 up; .wo)
    "q": ("q",), "k": ("k",), "v": ("v",), "o": ("o",), "wi": ("up",), "wi_0": ("gate",), "wi_1": ("up",),
    "wo": ("down",),
    # DistilBERT
    "q_lin": ("q",), "k_lin": ("k",), "v_lin": ("v",), "out_lin": ("o",), "lin1": ("up",), "lin2": ("down",),
    # fused projections
    "qkv_proj": ("q", "k", "v"), "c_attn": ("q", "k", "v"), "query_key_value": ("q", "k", "v"),
    "W_pack": ("q", "k", "v"), "gate_up_proj": ("gate", "up"),
}
# GPT-2's c_proj is the attention output under ``attn`` and the MLP's down projection under ``mlp``
ROLES_BY_PARENT = {"c_proj": {"attn": ("o",), "crossattention": ("o",), "mlp": ("down",)}}
# BERT-family encoders (BERT, RoBERTa, ELECTRA, ...) name three projections "dense": the attention output
# under attention.output, the MLP's up projection under intermediate, its down projection under the
# layer's own output (layer.N.output.dense); a pooler's or a head's dense layer has no role
ROLES_BY_PATH = ((re.compile(r"(?:^|\.)attention\.output\.dense$"), ("o",)),
                 (re.compile(r"(?:^|\.)intermediate\.dense$"), ("up",)),
                 (re.compile(r"(?:^|\.)\d+\.output\.dense$"), ("down",)))
_LAYER_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def roles_of(name: str) -> tuple[str, ...]:
    """The projection roles module ``name`` computes: one for a plain projection, several for a fused
    one, () for anything else (the output head, norms)."""
    parts = name.split(".")
    leaf = parts[-1]
    if leaf in ROLES_BY_PARENT and len(parts) > 1:
        return ROLES_BY_PARENT[leaf].get(parts[-2], ())
    if leaf == "dense":
        return next((roles for pattern, roles in ROLES_BY_PATH if pattern.search(name)), ())
    return ROLES_BY_LEAF.get(leaf, ())


def role_of(name: str) -> str | None:
    """The single role of a plain projection; None for a fused layer or a non-projection."""
    roles = roles_of(name)
    return roles[0] if len(roles) == 1 else None


def layer_index(name: str) -> int | None:
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def describe_layer(name: str, module: nn.Module) -> str:
    """``name`` with what a user needs to target it: its kind when it is Conv1D, its roles when fused."""
    roles = roles_of(name)
    notes = (["Conv1D"] if is_conv1d(module) else []) + ([f"fused {'/'.join(roles)}"] if len(roles) > 1 else [])
    return f"{name} ({', '.join(notes)})" if notes else name


def select_targets(model: nn.Module, cfg: AdapterConfig, default_roles: tuple[str, ...]) -> dict[str, nn.Module]:
    """{name: module} of the modules cfg adapts, in model order; raise if none match. A fused layer
    is chosen when any of its roles is asked for (see the module docstring)."""
    return select_targets_explained(model, cfg, default_roles)[0]


def select_targets_explained(model: nn.Module, cfg: AdapterConfig, default_roles: tuple[str, ...]
                             ) -> tuple[dict[str, nn.Module], dict[str, tuple[str, ...]]]:
    """(targets, {fused target: the roles it computes beyond those asked for})."""
    roles = cfg.target_roles
    if roles is None and not cfg.target_names:
        roles = default_roles
    names = [re.compile(p) for p in cfg.target_names]
    excludes = [re.compile(p) for p in cfg.exclude_names]
    chosen: dict[str, nn.Module] = {}
    extra: dict[str, tuple[str, ...]] = {}
    candidates: list[str] = []
    for name, mod in model.named_modules():
        if not name or not dense(mod):
            continue
        candidates.append(describe_layer(name, mod))
        if names and not any(p.search(name) for p in names):
            continue
        has = roles_of(name)
        if roles and not set(has) & set(roles):
            continue
        if any(p.search(name) for p in excludes):
            continue
        if cfg.layers is not None and layer_index(name) not in cfg.layers:
            continue
        chosen[name] = mod
        if roles and len(has) > 1 and not set(has) <= set(roles):
            extra[name] = tuple(r for r in has if r not in roles)
    if not chosen:
        shown = ", ".join(candidates[:10]) + (f" ... ({len(candidates)} in all)" if len(candidates) > 10 else "")
        raise ValueError(
            f"no target matched: target_names={cfg.target_names}, target_roles={roles}, "
            f"exclude_names={cfg.exclude_names}, layers={cfg.layers}. "
            f"Adaptable layers (nn.Linear or Conv1D) in this model: {shown or '(none)'}")
    return chosen, extra
