"""Projection roles as the audit reads them from module names, independently of variants' own targeting.

The placement check derives the expected adapted layers from these (``expected_modules``, ``fused_beyond``),
and the peft subject turns a card's roles into peft ``target_modules`` with them (``LEAVES``, ``key_matches``).
``resolve_targets`` gives a driver the layers a config asks for in the model at hand (names, roles, kind,
shape), so it never guesses which module holds a role.
"""
from __future__ import annotations

from dataclasses import dataclass

# role -> module name keys, as the audit (not variants/) reads an architecture: a key is a leaf name,
# or a dotted suffix where the leaf alone is ambiguous (GPT-2's c_proj is the attention output under
# attn and the MLP's down projection under mlp; a BERT-family encoder's "dense" is the attention output
# under attention.output, the up projection under intermediate and the down projection under the
# layer's own output, written N.output.dense: N a layer index). peft matches target_modules the same
# way (equal or ending in "." + key). A fused layer (qkv_proj, c_attn, gate_up_proj) is listed under
# each role it computes: it is expected wherever one of them is, adapted as one layer.
FUSED = {"qkv_proj": ("q", "k", "v"), "c_attn": ("q", "k", "v"), "query_key_value": ("q", "k", "v"),
         "gate_up_proj": ("gate", "up")}
LEAVES = {"q": ("q_proj", "query", "q_lin", "q"), "k": ("k_proj", "key", "k_lin", "k"),
          "v": ("v_proj", "value", "v_lin", "v"), "o": ("o_proj", "out_proj", "attn.c_proj", "out_lin", "o",
                                                        "attention.output.dense"),
          "gate": ("gate_proj", "w1", "wi_0"), "up": ("up_proj", "w3", "fc1", "c_fc", "lin1", "wi", "wi_1",
                                                      "intermediate.dense"),
          "down": ("down_proj", "w2", "fc2", "mlp.c_proj", "lin2", "wo", "N.output.dense")}
for _key, _roles in FUSED.items():
    for _r in _roles:
        LEAVES[_r] += (_key,)
ALL_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def key_matches(name: str, key: str) -> bool:
    """Whether module ``name`` is the one ``key`` names (its leaf, or a dotted suffix; N stands for a
    layer index)."""
    if key.startswith("N."):
        suffix = key[1:]
        return name.endswith(suffix) and name[:-len(suffix)].rsplit(".", 1)[-1].isdigit()
    return name == key or name.endswith("." + key)


def expected_modules(model, roles) -> set[str]:
    keys = {k for r in roles for k in LEAVES[r]}
    return {n for n, m in model.named_modules() if hasattr(m, "weight") and any(key_matches(n, k) for k in keys)}


def fused_beyond(names, roles) -> dict[str, tuple[str, ...]]:
    """{fused module: the roles it computes that ``roles`` does not ask for} among ``names``."""
    out = {}
    for n in names:
        fused = FUSED.get(n.rsplit(".", 1)[-1], ())
        if set(fused) - set(roles):
            out[n] = tuple(r for r in fused if r not in roles)
    return out


def roles_of(name: str) -> tuple[str, ...]:
    """The roles module ``name`` computes, as LEAVES reads them (several for a fused layer)."""
    return tuple(r for r in ALL_ROLES if any(key_matches(name, k) for k in LEAVES[r]))


@dataclass(frozen=True)
class Target:
    """One layer a config asks to adapt, as a driver needs it: its roles, its kind and its canonical
    (d_out, d_in) shape in the model at hand (GPT-2's fused c_attn is Conv1D with roles q, k, v)."""

    name: str
    roles: tuple[str, ...]
    kind: str  # "Linear" or "Conv1D"
    shape: tuple[int, int]  # (d_out, d_in)

    @property
    def fused(self) -> bool:
        return len(self.roles) > 1


def resolve_targets(model, cfg: dict, default_roles: tuple[str, ...] = ALL_ROLES) -> dict[str, Target]:
    """{module name: Target} of the dense layers the canonical ``cfg`` asks for in ``model``: by
    ``target_names`` (regexes searched in the name), else by ``target_roles`` (default ``default_roles``:
    the card's placement), minus ``exclude_names``, within ``layers`` (the first integer in the name). A
    fused layer is a target when any of its roles is asked for (adapted whole). So a driver never guesses
    which module holds a role (GPT-2's attn.c_proj is o, mlp.c_proj is down)."""
    import re

    from torch import nn
    names = [re.compile(p) for p in cfg.get("target_names") or ()]
    roles = cfg.get("target_roles")
    roles = tuple(roles) if roles is not None else (() if names else tuple(default_roles))
    excludes = [re.compile(p) for p in cfg.get("exclude_names") or ()]
    layers = cfg.get("layers")
    out = {}
    for n, m in model.named_modules():
        conv1d = type(m).__name__ == "Conv1D" and hasattr(m, "nf")
        if not n or not (isinstance(m, nn.Linear) or conv1d):
            continue
        has = roles_of(n)
        if (names and not any(p.search(n) for p in names)) or (roles and not set(has) & set(roles)):
            continue
        if any(p.search(n) for p in excludes):
            continue
        index = re.search(r"(?:^|\.)(\d+)(?:\.|$)", n)
        if layers is not None and (index is None or int(index.group(1)) not in layers):
            continue
        w = m.weight
        out[n] = Target(n, has, "Conv1D" if conv1d else "Linear",
                        (w.shape[1], w.shape[0]) if conv1d else (w.shape[0], w.shape[1]))
    return out
