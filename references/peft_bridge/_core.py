"""Shared machinery of the peft bridge: mapping data types, layout transforms, exact targeting,
the adapter-dtype plan, and the generic copy-in / read-back loops.

Nothing here knows a particular method; each method module (lora.py, ia3.py, hra.py, delora.py,
road.py) declares its `VariantMapping` as plain data plus a small config builder.
This package never imports `variants` (a reference that calls the code it checks proves nothing).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

ADAPTER = "default"  # peft's adapter name; every peft path below contains it literally

# peft (tuners_utils.cast_adapter_dtype) upcasts these base dtypes to float32 when autocast_adapter_dtype=True;
# it never downcasts and never touches float32/float64 (float8 types are upcast too but are not bases here).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class BridgeUnsupported(NotImplementedError):
    """The requested adapter state has no faithful peft counterpart (the peft_parity check should report n/a
    with this message as the reason)."""


# ---------------------------------------------------------------------------------------------------------
# mapping data
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorMap:
    """One canonical tensor (references/STATE_LAYOUT.md) and where it lives in the peft layer.

    canonical  name in the canonical state dict, e.g. "A"
    peft       dotted path relative to the peft tuner layer that replaced the target module,
               e.g. "lora_A.default.weight" (full name: "base_model.model.<module>.lora_A.default.weight";
               in saved adapter files peft drops ".default")
    transform  canonical -> peft layout: a key of TRANSFORMS
    kind       "parameter" (trainable in peft), "buffer" (peft persistent buffer, frozen) or
               "base weight" (the wrapped layer's own frozen weight)
    optional   the state may omit it (then peft's value is kept)
    note       anything a reader should know about this entry
    """

    canonical: str
    peft: str
    transform: str = "identity"
    kind: str = "parameter"
    optional: bool = False
    note: str = ""


# What a peft config field does to the function an adapted layer computes, for every field the audit does not
# vary as a config axis. Every field of a method's peft config class (in any release the matrix covers) is named
# in its mapping with one of these, so an option that changes the function cannot go unaudited unnoticed.
EFFECTS = {
    "axis": "changes the computed function: a config axis of the card (ours names our field)",
    "placement": "chooses which layers or modules are adapted or trained: the placement check judges it",
    "stochastic": "training-time randomness (dropout): the identity in eval mode, where the audit compares",
    "init": "the initial values only: the bridge overwrites them with the given state, the subject runs the card's init",
    "checkpoint": "what a saved file holds, not what the layer computes: the save_load check",
    "method": "selects which method of this config class runs (each audited by its own card, where there is one)",
    "layout": "declares how the base layer stores its weight (Conv1D's (d_in, d_out)): set to match the layer",
    "layer-type": "applies only to layer types with no linear counterpart in the zoo (Conv2d, Embedding, quantised)",
    "runtime": "where or how fast it runs (device, kernels, caching), not what it computes",
    "precision": "how closely an iterative computation approaches its exact result (a stopping tolerance)",
    "derived": "determined by another field that is an axis (named in the rule)",
    "per-layer": "a per-layer value of an axis (rank_pattern, alpha_pattern): a named layer computes the same "
                 "equation with its own value, so the axis covers it",
    "elsewhere": "an axis of another card on the same config class (named in the rule), where the same term is "
                 "audited",
    "inert": "has no effect on this method (peft reads it for other methods of the class only)",
    "unaudited": "changes the function and is held at one value: an audit gap the reports list",
}


@dataclass(frozen=True)
class ConfigField:
    """One peft config field and where its value comes from.

    ours    our config field (the plain cfg dict key), or None when the value is fixed by the bridge
    peft    the peft config field name
    rule    how the value is derived, in words
    effect  a key of EFFECTS: "axis" when ours names our field, else why the audit does not vary it
    """

    ours: str | None
    peft: str
    rule: str = "copied"
    effect: str = ""

    def __post_init__(self):
        effect = self.effect or ("axis" if self.ours else "")
        if effect not in EFFECTS or (effect == "axis") != (self.ours is not None):
            raise ValueError(f"ConfigField {self.peft!r}: effect {self.effect!r} must be 'axis' exactly when ours "
                             f"names our field, else one of {sorted(set(EFFECTS) - {'axis'})}")
        object.__setattr__(self, "effect", effect)


def targeting_fields(*names: str) -> tuple[ConfigField, ...]:
    """The fields every tuner config has for choosing what is adapted (fixed by the audit's targeting)."""
    return tuple(ConfigField(None, n, "not set: the audit's target_modules regex names exactly the targets",
                             "placement") for n in names)


TARGETING = ("exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern")


def with_rest(named: tuple[ConfigField, ...], rest: tuple[ConfigField, ...]) -> tuple[ConfigField, ...]:
    """``named`` plus the entries of ``rest`` (a config class's shared fields) for fields it does not name."""
    have = {c.peft.split(".")[0] for c in named}
    return named + tuple(c for c in rest if c.peft not in have)


@dataclass(frozen=True)
class VariantMapping:
    """Everything the bridge does for one variant, as data a reader can check against peft's source."""

    variant: str
    peft_config_class: str              # e.g. "peft.LoraConfig"
    peft_layer_class: str               # the tuner layer that replaces each target, e.g. "peft.tuners.lora.layer.Linear"
    tensors: tuple[TensorMap, ...]
    config: tuple[ConfigField, ...]
    init: str                           # which peft init runs and why it does not matter (or does)
    notes: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = ("torch.nn.Linear",)
    # what the installed peft must have for the method: names the package exports, and the first release
    # whose layout this mapping reads (the peft subject calls older releases' method unsupported, saying so)
    peft_exports: tuple[str, ...] = ()
    since: str = "0.1.0"
    # config classes nested in a field, whose own fields the ledger names as "<field>.<name>" (EVA's eva_config)
    nested: tuple[tuple[str, str], ...] = ()
    # -- behaviour (not part of the data a reader compares; excluded from repr/eq) -------------------
    make_config: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    check_state: Callable[..., None] | None = field(default=None, repr=False, compare=False)
    # the peft *subject* (audit/subjects/peft.py), which runs peft's own init rather than copying a state:
    #   subject_config(cfg, targets, conv1d, make) -> peft config. cfg: our canonical config dict;
    #     targets: {"target_modules": ..., maybe "layers_to_transform": ...}; conv1d: the model has
    #     transformers Conv1D layers; make(cls_name, **kw): peft's config class (an argument the installed
    #     release lacks is refused naming it)
    #   subject_defaults(defaults) -> {canonical field: peft's default}; defaults(cls_name) -> that peft
    #     config class's field defaults
    subject_config: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    subject_defaults: Callable[..., dict] | None = field(default=None, repr=False, compare=False)

    def rows(self) -> list[dict[str, str]]:
        """Flat rows (one per tensor) for tables/pandas."""
        return [
            {"variant": self.variant, "canonical": t.canonical, "peft": t.peft, "transform": t.transform,
             "kind": t.kind, "optional": str(t.optional), "note": t.note}
            for t in self.tensors
        ]

    def describe(self) -> str:
        """A short markdown description of the mapping."""
        lines = [f"### {self.variant} -> {self.peft_config_class} ({self.peft_layer_class})", "",
                 "| canonical | peft (relative to the layer) | transform | kind |", "|---|---|---|---|"]
        for t in self.tensors:
            opt = " (optional)" if t.optional else ""
            lines.append(f"| {t.canonical}{opt} | `{t.peft}` | {t.transform} | {t.kind} |")
        lines += ["", "| ours | peft | rule |", "|---|---|---|"]
        for c in self.config:
            lines.append(f"| {c.ours or '-'} | `{c.peft}` | {c.rule} |")
        lines += ["", f"init: {self.init}"]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# layout transforms: name -> (canonical -> peft, peft -> canonical); `conv1d` says the base layer stores W as
# (d_in, d_out) (transformers' Conv1D); only the base-weight transform depends on it
# ---------------------------------------------------------------------------------------------------------
def _base_layout(t: torch.Tensor, conv1d: bool) -> torch.Tensor:
    return t.t() if conv1d else t


TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor, bool], torch.Tensor], Callable[[torch.Tensor, bool], torch.Tensor]]] = {
    "identity": (lambda t, c: t, lambda t, c: t),
    "transpose": (lambda t, c: t.t(), lambda t, c: t.t()),
    "reshape (d_out,1)": (lambda t, c: t.reshape(-1, 1), lambda t, c: t.reshape(-1)),
    "reshape (1,d_in)": (lambda t, c: t.reshape(1, -1), lambda t, c: t.reshape(-1)),
    # canonical W is (d_out, d_in); nn.Linear stores it so, transformers' Conv1D stores Wᵀ
    "base layout (identity for nn.Linear, transpose for Conv1D)": (_base_layout, _base_layout),
}
BASE_LAYOUT = "base layout (identity for nn.Linear, transpose for Conv1D)"


def _skew_blocks(q: torch.Tensor) -> torch.Tensor:
    """Full skew blocks (…, b, b) from packed strict upper triangles q (…, b(b−1)/2), row-major."""
    b = (1 + int(round((1 + 8 * q.shape[-1]) ** 0.5))) // 2
    rows, cols = torch.triu_indices(b, b, 1)
    m = q.new_zeros(*q.shape[:-1], b, b)
    m[..., rows, cols] = q
    return m - m.transpose(-1, -2)


def _packed(t: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(t.shape[-1], t.shape[-1], 1)
    return (0.5 * (t - t.transpose(-1, -2)))[..., rows, cols]


# peft's BOFT: full blocks B whose skew part S = ½(B − Bᵀ) gives the Cayley rotation of −S (tuners/boft/layer.py
# cayley_batch): canonical Q = −(strict upper triangle of S), written as B = the skew blocks of −Q
NEGATED_PACKED_SKEW = "negated packed skew (Q = −triu ½(B − Bᵀ))"
TRANSFORMS[NEGATED_PACKED_SKEW] = (lambda t, c: _skew_blocks(-t), lambda t, c: -_packed(t))


# ---------------------------------------------------------------------------------------------------------
# targeting
# ---------------------------------------------------------------------------------------------------------
def exact_target_regex(names: list[str]) -> str:
    """A regex that peft matches with re.fullmatch against each module's full dotted name, so exactly `names`
    are targeted. (A *list* in peft's target_modules also matches any module whose name ends with ".<entry>",
    e.g. "up_proj" would also hit "block.up_proj", so the bridge always passes a string.)"""
    return "(?:" + "|".join(re.escape(n) for n in names) + ")"


def exact_pattern_key(name: str) -> str:
    """A rank_pattern / alpha_pattern key matching exactly `name`: peft tests re.match(rf"(.*\\.)?({key})$", name),
    so a leading ^ forbids any prefix."""
    return "^" + re.escape(name)


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers is a dependency of the audit
        return False
    return isinstance(module, Conv1D)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    d_in: int
    d_out: int
    conv1d: bool
    dtype: torch.dtype
    has_bias: bool


def layer_info(model: nn.Module, name: str) -> LayerInfo:
    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"target module {name!r} not found in the model") from None
    return layer_info_from_module(name, mod)


# ---------------------------------------------------------------------------------------------------------
# adapter dtype
# ---------------------------------------------------------------------------------------------------------
def adapter_dtype_plan(base_dtype: torch.dtype, cfg_dtype: str | None) -> tuple[bool, torch.dtype]:
    """(autocast_adapter_dtype to pass to get_peft_model, the adapter dtype peft will then use).

    peft first moves a new adapter to the base layer's dtype, then, only if autocast_adapter_dtype=True, upcasts
    float16/bfloat16 adapters to float32. So peft can give: the base dtype, or float32 over a 16-bit base.
    cfg dtype None means "the base dtype" (autocast off); "float32" turns autocast on (a no-op over fp32/fp64
    bases); any other request turns it off. A request peft cannot honour (e.g. float64 adapters over a float32
    base, or float32 adapters over a float64 base) yields the base dtype and is reported by bridge_info()."""
    if cfg_dtype is None:
        return False, base_dtype
    want = getattr(torch, cfg_dtype)
    autocast = want == torch.float32
    got = torch.float32 if (autocast and base_dtype in _LOW_PRECISION) else base_dtype
    return autocast, got


# ---------------------------------------------------------------------------------------------------------
# generic build / read
# ---------------------------------------------------------------------------------------------------------
def tuner_root(peft_model: nn.Module) -> nn.Module:
    """The wrapped model inside a PeftModel (module names there equal the base model's names)."""
    base = getattr(peft_model, "base_model", None)
    inner = getattr(base, "model", None)
    if inner is None:
        raise TypeError(f"expected a peft PeftModel, got {type(peft_model).__name__}")
    return inner


def peft_layer(peft_model: nn.Module, name: str) -> nn.Module:
    """The peft tuner layer that replaced target module `name` (e.g. peft.tuners.lora.layer.Linear)."""
    return tuner_root(peft_model).get_submodule(name)


def adapted_module_names(peft_model: nn.Module) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    root = tuner_root(peft_model)
    return {n for n, m in root.named_modules() if isinstance(m, BaseTunerLayer) and n}


def _resolve(layer: nn.Module, path: str) -> torch.Tensor:
    t: Any = layer
    for part in path.split("."):  # attributes, or the keys of a plain dict (SHiRA's shira_indices[adapter])
        t = t.get(part) if isinstance(t, dict) else getattr(t, part, None)
        if t is None:
            break
    if not isinstance(t, torch.Tensor):
        raise KeyError(f"peft layer {type(layer).__name__} has no tensor at {path!r}")
    return t


def copy_state_into(layer: nn.Module, info: LayerInfo, mapping: VariantMapping,
                    state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for tm in mapping.tensors:
            if tm.canonical not in state:
                if tm.optional:
                    continue
                raise KeyError(f"{info.name}: {mapping.variant} state lacks {tm.canonical!r}")
            dst = _resolve(layer, tm.peft)
            src = TRANSFORMS[tm.transform][0](state[tm.canonical].detach(), info.conv1d)
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(
                    f"{info.name}: canonical {tm.canonical} {tuple(state[tm.canonical].shape)} maps to "
                    f"{tuple(src.shape)} ({tm.transform}) but peft's {tm.peft} is {tuple(dst.shape)}")
            dst.copy_(src.to(device=dst.device, dtype=dst.dtype))


def read_state_from(layer: nn.Module, info: LayerInfo, mapping: VariantMapping) -> dict[str, torch.Tensor]:
    out = {}
    for tm in mapping.tensors:
        try:
            src = _resolve(layer, tm.peft).detach()
        except KeyError:
            if tm.optional:  # a tensor this layer does not have (LoKr: per the layer's shape and rank)
                continue
            raise
        out[tm.canonical] = TRANSFORMS[tm.transform][1](src, info.conv1d).clone().contiguous()
    return out


def check_state_keys(mapping: VariantMapping, name: str, state: Mapping[str, torch.Tensor]) -> None:
    known = {t.canonical for t in mapping.tensors}
    missing = [t.canonical for t in mapping.tensors if not t.optional and t.canonical not in state]
    extra = sorted(set(state) - known)
    if missing or extra:
        raise ValueError(f"{name}: {mapping.variant} state has missing keys {missing} and unknown keys {extra}; "
                         f"expected {sorted(known)}")


def build(base_model: nn.Module, mapping: VariantMapping, cfg: Mapping[str, Any],
          target_module_names: list[str] | tuple[str, ...],
          states: Mapping[str, Mapping[str, torch.Tensor]],
          copy_model: Callable[[nn.Module], nn.Module] = copy.deepcopy) -> nn.Module:
    from peft import get_peft_model

    names = list(target_module_names)
    if not names:
        raise ValueError("target_module_names is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"target_module_names has duplicates: {names}")
    missing_states = [n for n in names if n not in states]
    if missing_states:
        raise KeyError(f"no adapter state for target(s) {missing_states}")
    infos = {n: layer_info(base_model, n) for n in names}
    if any(i.conv1d for i in infos.values()):
        if "transformers.pytorch_utils.Conv1D" not in mapping.layer_types:
            raise BridgeUnsupported(f"peft's {mapping.variant} supports torch.nn.Linear only (Conv1D target given)")
        if not all(i.conv1d for i in infos.values()):
            raise BridgeUnsupported("mixing nn.Linear and Conv1D targets: peft's fan_in_fan_out is one global flag")
    if mapping.check_state is not None:  # first: it may refuse a state with keys peft cannot hold (DeLoRA C, D)
        mapping.check_state(cfg, {n: states[n] for n in names})
    for n in names:
        check_state_keys(mapping, n, states[n])

    dtypes = {i.dtype for i in infos.values()}
    if len(dtypes) != 1:
        raise BridgeUnsupported(f"target layers have mixed dtypes {dtypes}; one adapter dtype plan per model")
    base_dtype = dtypes.pop()
    autocast, adapter_dtype = adapter_dtype_plan(base_dtype, cfg.get("dtype", "float32"))

    peft_config, wrapped = mapping.make_config(cfg, names, states, infos)
    model = copy_model(base_model)
    # autocast_adapter_dtype exists from peft 0.12.0; before it adapters always took the base dtype (autocast off)
    import inspect
    kw = {"autocast_adapter_dtype": autocast} if "autocast_adapter_dtype" in inspect.signature(
        get_peft_model).parameters else {}
    if not kw:
        adapter_dtype = base_dtype
    peft_model = get_peft_model(model, peft_config, **kw)

    got = adapted_module_names(peft_model)
    if got != set(wrapped):
        raise RuntimeError(f"peft adapted {sorted(got)} but the bridge asked for exactly {sorted(wrapped)}")
    for n in wrapped:
        copy_state_into(peft_layer(peft_model, n), infos[n], mapping, states[n])
    peft_model.eval()
    requested = cfg.get("dtype", "float32")
    peft_model.bridge_info = {
        "variant": mapping.variant,
        "targets": names,
        "wrapped": list(wrapped),
        "base_dtype": str(base_dtype).replace("torch.", ""),
        "requested_adapter_dtype": requested,
        "autocast_adapter_dtype": autocast,
        "adapter_dtype": str(adapter_dtype).replace("torch.", ""),
        "adapter_dtype_matches": requested is None or getattr(torch, requested) == adapter_dtype,
    }
    return peft_model


def read(peft_model: nn.Module, mapping: VariantMapping,
         target_module_names: list[str] | tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    out: dict[str, dict[str, torch.Tensor]] = {}
    root = tuner_root(peft_model)
    for n in target_module_names:
        layer = root.get_submodule(n)
        if not isinstance(layer, BaseTunerLayer):
            wrapped = getattr(peft_model, "bridge_info", {}).get("wrapped")
            if mapping.variant == "eva" and wrapped is not None and n not in wrapped:
                out[n] = _eva_rank0_state(layer, peft_model.bridge_info["adapter_dtype"])
                continue
            raise KeyError(f"{n} is not a peft-adapted layer of this model")
        base = layer.get_base_layer()
        info = layer_info_from_module(n, base)
        out[n] = read_state_from(layer, info, mapping)
    return out


def layer_info_from_module(name: str, mod: nn.Module) -> LayerInfo:
    if isinstance(mod, nn.Linear):
        d_out, d_in = mod.weight.shape
        conv1d = False
    elif _is_conv1d(mod):
        d_in, d_out = mod.weight.shape
        conv1d = True
    else:
        raise BridgeUnsupported(
            f"{name}: {type(mod).__name__} is neither torch.nn.Linear nor transformers Conv1D; the peft bridge "
            "only maps dense linear layers")
    return LayerInfo(name, d_in, d_out, conv1d, mod.weight.dtype, getattr(mod, "bias", None) is not None)


def _eva_rank0_state(mod: nn.Module, dtype: str) -> dict[str, torch.Tensor]:
    """peft removes the LoRA of an EVA layer whose redistributed rank is 0 (the bridge does not target it); its
    canonical state is A (0, d_in), B (d_out, 0)."""
    info = layer_info_from_module("", mod)
    kw = {"dtype": getattr(torch, dtype), "device": mod.weight.device}
    return {"A": torch.zeros(0, info.d_in, **kw), "B": torch.zeros(info.d_out, 0, **kw)}
