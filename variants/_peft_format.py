"""peft's adapter folder format, declared per variant: ``Variant.peft_format`` (a ``PeftFormat``).

A peft adapter folder holds ``adapter_config.json`` (the peft config: ``peft_type`` and its fields)
and ``adapter_model.safetensors``: per adapted layer ``base_model.model.<module>.<suffix>`` (the
tuner path without the adapter name, e.g. ``lora_A.weight``, ``ia3_l``), and tensors shared by all
layers at ``base_model.<suffix>`` (VeRA's projections). Each variant file says which suffix holds
each of its tensors (and the layout change, if any), how its config maps onto peft's fields both
ways, and which peft configs it is (``claims``). ``variants.save_peft`` / ``variants.load_peft``
(``_peft_io``) are the only code that reads this; nothing here imports peft.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ._layers import is_conv1d

LAYER_PREFIX = "base_model.model."
SHARED_PREFIX = "base_model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# peft config fields that never change what a loaded adapter computes: bookkeeping, and how peft
# found the layers (the tensors in the file say which layers are adapted, exactly)
INERT = ("peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "peft_version",
         "auto_mapping", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
         "megatron_core", "megatron_config", "runtime_config", "fan_in_fan_out")

# ours -> peft's: ·ᵀ, (n,) -> (n, 1), (n,) -> (1, n), −· (each is its own inverse up to the reshape);
# "negated skew blocks": packed skew rows q (…, b(b−1)/2) -> the full skew blocks of −q (…, b, b), read back
# as the strict upper triangle of −½(B − Bᵀ) (peft's BOFT: full blocks, Cayley of their skew part, sign flipped)
# "int32": int64 positions -> peft's int32 (SHiRA's shira_indices; read back as int64)
TRANSFORMS = ("identity", "transpose", "column", "row", "negate", "negated skew blocks", "int32")


def _skew_full(q: torch.Tensor) -> torch.Tensor:
    b = (1 + int(round((1 + 8 * q.shape[-1]) ** 0.5))) // 2
    rows, cols = torch.triu_indices(b, b, 1)
    m = q.new_zeros(*q.shape[:-1], b, b)
    m[..., rows, cols] = q
    return m - m.transpose(-1, -2)


def _skew_packed(t: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(t.shape[-1], t.shape[-1], 1)
    return (0.5 * (t - t.transpose(-1, -2)))[..., rows, cols]


def to_peft(t: torch.Tensor, transform: str) -> torch.Tensor:
    """Our tensor in peft's layout."""
    if transform == "transpose":
        return t.t()
    if transform == "column":
        return t.reshape(-1, 1)
    if transform == "row":
        return t.reshape(1, -1)
    if transform == "negate":
        return -t
    if transform == "negated skew blocks":
        return _skew_full(-t)
    if transform == "int32":
        return t.to(torch.int32)
    return t


def from_peft(t: torch.Tensor, transform: str, shape: torch.Size) -> torch.Tensor:
    """peft's tensor in our layout (``shape``); a tensor whose size does not fit is returned as is, for
    the shape check to report."""
    if transform == "transpose" and t.dim() == 2:
        t = t.t()
    elif transform in ("column", "row") and t.numel() == shape.numel():
        t = t.reshape(shape)
    elif transform == "negate":
        t = -t
    elif transform == "negated skew blocks" and t.dim() >= 2 and t.shape[-1] == t.shape[-2]:
        t = -_skew_packed(t)
    elif transform == "int32":
        t = t.long()
    return t


def pattern_value(pattern: Mapping[str, Any] | None, name: str, default: float) -> float:
    """The value a peft rank_pattern / alpha_pattern gives module ``name``, as peft matches it
    (peft.utils.other.get_pattern_key: the first key with re.match('(.*\\.)?(key)$', name)); ``default``
    (the config's r or alpha) where no key matches."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return float(value)
    return float(default)


def exact_key(name: str) -> str:
    """A rank_pattern / alpha_pattern key that matches module ``name`` only."""
    return "^" + re.escape(name)


@dataclass(frozen=True)
class PeftFormat:
    """How one variant is written in peft's adapter folder format.

    peft_type      peft's PeftType value, e.g. "LORA"
    tensors        our tensor name -> the saved key's suffix (relative to the layer, or to the model
                   for ``shared`` ones), e.g. {"A": "lora_A.weight"}
    transforms     our name -> a TRANSFORMS entry (ours -> peft's layout); default identity. Or a function
                   of our config giving that map, where peft computes another function of the same numbers
                   under some config (OFT's exact Cayley branch: R(−Q))
    shared         our tensors that one tensor serves on every layer (saved once)
    claims         (peft config dict, adapted module names) -> True when this variant is that config
    to_config      (our config, AdapterState) -> peft config fields (beyond peft_type and target_modules);
                   raises ValueError when peft cannot represent the adapter
    from_config    (peft config dict, {module: {our name: shape in the file}}) -> our config fields
    reads          the peft fields ``from_config`` and ``claims`` read
    fixed          {peft field: the values we can load}: any other value is refused naming the field
    inert          peft fields of this type that do not change a loaded adapter (its init, which the
                   file's tensors overwrite; options that act only together with a refused one)
    training_only  peft fields that change training only; a value our variant cannot take is dropped
                   with a warning (the loaded adapter computes the same function)
    reinit         a load runs our own init first (PiSSA/OLoRA: peft recomputes the residual weight
                   from the base when it loads such a checkpoint, and so do we)
    per_layer_rank our name of the tensor whose first dimension is the layer's rank (EVA), or None
    conv1d         None where peft adapts transformers Conv1D layers (fan_in_fan_out) as ours; else why it
                   cannot, and ``save_peft`` refuses such an adapter with that reason
    pack           (our config, {saved key: tensor}) -> the tensors ``save_peft`` writes, where a peft option
                   stores another form of them (VB-LoRA's save_only_topk_weights); None: as they are
    unpack         (peft config dict, {saved key: tensor}) -> the tensors in the plain form ``load_peft`` reads
                   (the inverse of ``pack`` up to what the packed form dropped); None: as they are
    unloadable     None, or why peft's own checkpoint of this method does not rebuild the adapted layer from
                   the base and the file (CorDA, LoRA-GA: W_res needs the calibration data again): then
                   ``save_peft`` and ``load_peft`` refuse it with that reason
    """

    peft_type: str
    tensors: Mapping[str, str]
    claims: Callable[[Mapping[str, Any], list[str]], bool]
    to_config: Callable[..., dict]
    from_config: Callable[..., dict]
    reads: tuple[str, ...] = ()
    transforms: Mapping[str, str] | Callable[[Any], Mapping[str, str]] = field(default_factory=dict)
    shared: tuple[str, ...] = ()
    fixed: Mapping[str, tuple] = field(default_factory=dict)
    inert: tuple[str, ...] = ()
    training_only: tuple[str, ...] = ()
    reinit: bool = False
    per_layer_rank: str | None = None
    conv1d: str | None = "peft's layers of this method adapt torch.nn.Linear only (it refuses transformers Conv1D)"
    pack: Callable[[Any, dict], dict] | None = None
    unpack: Callable[[Mapping[str, Any], dict], dict] | None = None
    unloadable: str | None = None

    def transform(self, cfg, name: str) -> str:
        """The TRANSFORMS entry of our tensor ``name`` under our config ``cfg``."""
        table = self.transforms(cfg) if callable(self.transforms) else self.transforms
        kind = table.get(name, "identity")
        if kind not in TRANSFORMS or name not in self.tensors:
            raise ValueError(f"PeftFormat({self.peft_type}): bad transform {name!r}: {kind!r}; allowed {TRANSFORMS}")
        return kind

    def key(self, module: str, name: str) -> str:
        """The saved key of our tensor ``name`` on adapted module ``module``."""
        return f"{SHARED_PREFIX}{self.tensors[name]}" if name in self.shared else \
            f"{LAYER_PREFIX}{module}.{self.tensors[name]}"

    def require_mapped(self, variant: str, names) -> None:
        """Refuse an adapter holding a tensor this format has no place for (DeLoRA's paper-init C, D)."""
        unmapped = sorted(set(names) - set(self.tensors))
        if unmapped:
            raise ValueError(f"{variant}: tensors {unmapped} have no place in peft's {self.peft_type} format "
                             f"(peft stores {sorted(self.tensors)})")

    def known_fields(self) -> set[str]:
        return set(INERT) | set(self.reads) | set(self.fixed) | set(self.inert) | set(self.training_only)


def conv1d_targets(st) -> bool:
    """The adapted layers are transformers Conv1D (peft's fan_in_fan_out)."""
    return any(is_conv1d(m) for m in st.targets.values())


def peft_type_is(peft_type: str) -> Callable[[Mapping[str, Any], list[str]], bool]:
    """A ``claims`` for a variant that is the only one of its peft type."""
    return lambda pcfg, names: pcfg.get("peft_type") == peft_type
