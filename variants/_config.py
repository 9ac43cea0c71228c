"""Typed adapter configs: the common fields every variant shares, validated before any tensor is touched."""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

DTYPES = ("float32", "bfloat16", "float16", "float64")
ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def _fail(cls_name: str, field: str, msg: str, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"{cls_name}.{field}: {msg}")


@dataclass(frozen=True)
class AdapterConfig:
    """Fields common to every variant.

    r            rank (or the variant's size parameter), > 0
    alpha        scale numerator; the variant says how it is used (LoRA: s = alpha / r)
    dtype        dtype of the adapter tensors: one of DTYPES, or None for the base weight's dtype
                 (default float32, like peft's autocast_adapter_dtype)
    target_names regexes searched (re.search) in module names; empty = no name filter
    target_roles projection roles (q, k, v, o, gate, up, down); None = the variant's default
                 roles when target_names is empty, else no role filter
    exclude_names regexes; a module matching any of them is never targeted
    layers       decoder layer indices to adapt (the first integer in the module name); None = all
    seed         seed of the init RNG: same seed, same adapter
    """

    variant: ClassVar[str] = ""
    unused: ClassVar[tuple[str, ...]] = ()  # common fields the variant ignores: a value other than the default is refused
    training_only: ClassVar[tuple[str, ...]] = ()  # fields that change training, not the function (LoRA's dropout)
    # options beyond the paper's method (peft's lora_bias, EVA's whiten): left out of the canonical config at
    # their defaults, so a driver that passes the config through to its library meets only what it asks for
    extensions: ClassVar[tuple[str, ...]] = ()

    r: int = 8
    alpha: float = 8.0
    dtype: str | None = "float32"
    target_names: tuple[str, ...] = ()
    target_roles: tuple[str, ...] | None = None
    exclude_names: tuple[str, ...] = ()
    layers: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _coerce_and_typecheck(self)
        name = type(self).__name__
        defaults = _defaults(type(self))
        for fld in self.unused:
            if getattr(self, fld) != defaults[fld]:
                raise _fail(name, fld, f"{self.variant} does not use {fld} (got {getattr(self, fld)!r}): leave it "
                                       f"unset; the fields {self.variant} uses: {self.used_fields()}", TypeError)
        if self.r <= 0:
            raise _fail(name, "r", f"must be a positive integer, got {self.r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise _fail(name, "dtype", f"must be one of {DTYPES} or None, got {self.dtype!r}")
        if self.target_roles is not None:
            bad = [x for x in self.target_roles if x not in ROLES]
            if bad:
                raise _fail(name, "target_roles", f"unknown role(s) {bad}; allowed: {ROLES}")
        for fld in ("target_names", "exclude_names"):
            for pat in getattr(self, fld):
                try:
                    re.compile(pat)
                except re.error as e:
                    raise _fail(name, fld, f"invalid regex {pat!r}: {e}") from None
        if self.layers is not None and any(i < 0 for i in self.layers):
            raise _fail(name, "layers", f"indices must be >= 0, got {self.layers}")
        self.check()

    def check(self) -> None:
        """Variant-specific range checks; raise ValueError naming the field."""

    @classmethod
    def used_fields(cls) -> list[str]:
        """The fields this variant reads (every field but the ``unused`` ones)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in cls.unused]

    def fail(self, field: str, msg: str) -> Exception:
        return _fail(type(self).__name__, field, msg)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self, function_only: bool = False) -> dict[str, Any]:
        """Every field (tuples as lists); ``function_only``: without the ``training_only`` and ``extensions``
        fields at their defaults, i.e. the fields that define the function the adapter computes (the audit's canonical
        config: a subject's driver need not know a training option it is never given)."""
        d = dataclasses.asdict(self)
        if function_only:
            defaults = _defaults(type(self))
            quiet = self.training_only + self.extensions
            d = {k: v for k, v in d.items() if not (k in quiet and v == defaults[k])}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps({"variant": self.variant, "fields": self.to_dict()}, sort_keys=True)

    def replace(self, **fields: Any) -> "AdapterConfig":
        return dataclasses.replace(self, **fields)


def _check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, coerced value) for the small set of annotations configs use."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in typing.get_args(tp):
            ok, v = _check_type(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            ok, _ = _check_type(value, elem)
            if not ok:
                return False, value
            value = (value,)  # a lone element where a tuple is expected: target_names="q_proj", layers=3
        value = list(value)  # any iterable: a list, range(2), a generator
        out = []
        for v in value:
            ok, cv = _check_type(v, elem)
            if not ok:
                return False, value
            out.append(cv)
        return True, tuple(out)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    return True, value


def _dtype_name(value: Any) -> Any:
    """A torch.dtype as its name (torch.bfloat16 -> "bfloat16"); "torch.bfloat16" likewise."""
    if type(value).__name__ == "dtype" and str(value).startswith("torch."):
        return str(value).removeprefix("torch.")
    if isinstance(value, str) and value.startswith("torch."):
        return value.removeprefix("torch.")
    return value


@functools.lru_cache(maxsize=None)
def _defaults(cls: type) -> dict[str, Any]:
    """A config class's field defaults (read once per class)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """A config class's resolved annotations (get_type_hints evaluates each string annotation: once per class)."""
    return typing.get_type_hints(cls)


def _coerce_and_typecheck(cfg: AdapterConfig) -> None:
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        tp = hints[f.name]
        value = getattr(cfg, f.name)
        if f.name == "dtype":
            value = _dtype_name(value)
            if value is not None and value not in DTYPES:
                raise _fail(type(cfg).__name__, "dtype", f"got {value!r}; allowed: a torch.dtype or a name "
                                                         f"among {DTYPES}, or None for the base weight's dtype")
        ok, coerced = _check_type(value, tp)
        if not ok:
            exc = ValueError if typing.get_origin(tp) is typing.Literal else TypeError
            allowed = f"one of {typing.get_args(tp)}" if exc is ValueError else _describe(tp)
            raise _fail(type(cfg).__name__, f.name, f"got {value!r}; expected {allowed}", exc)
        object.__setattr__(cfg, f.name, coerced)


def _describe(tp: Any) -> str:
    """An annotation in words: "a tuple of str (or one str) or None"."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        elem = _describe(typing.get_args(tp)[0])
        return f"a tuple of {elem} (any iterable, or one {elem})"
    if origin is typing.Literal:
        return f"one of {typing.get_args(tp)}"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))
