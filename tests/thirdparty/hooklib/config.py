"""The one configuration object of hooklib, validated when it is built."""
from __future__ import annotations

import re
from dataclasses import dataclass

METHODS = ("lora", "ia3")
DTYPES = ("float32", "float64", "bfloat16", "float16")
# layers adapted when ``targets`` and ``regex`` are both left empty
DEFAULT_TARGETS = {"lora": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                   "ia3": ("k_proj", "v_proj")}


@dataclass(frozen=True)
class HookConfig:
    """method: "lora" or "ia3". rank, alpha, rslora: LoRA's rank and scale alpha/rank (alpha/√rank with
    rslora); IA3 ignores them. targets: leaf names of the nn.Linear layers to adapt (None: the method's
    default); regex: patterns searched in full module names, used instead of targets when given.
    adapter_dtype: dtype of the adapter tensors (None: the layer's). seed: LoRA's init draw."""

    method: str = "lora"
    rank: int = 8
    alpha: float = 8.0
    rslora: bool = False
    targets: tuple[str, ...] | None = None
    regex: tuple[str, ...] = ()
    adapter_dtype: str | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("targets", "regex"):  # lists (e.g. from JSON) become tuples
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.method not in METHODS:
            raise ValueError(f"HookConfig.method must be one of {METHODS}, got {self.method!r}")
        for name in ("rank", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"HookConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
        if self.rank < 1:
            raise ValueError(f"HookConfig.rank must be at least 1, got {self.rank}")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool):
            raise TypeError(f"HookConfig.alpha must be a number, got {self.alpha!r} ({type(self.alpha).__name__})")
        if not isinstance(self.rslora, bool):
            raise TypeError(f"HookConfig.rslora must be a bool, got {self.rslora!r}")
        for name in ("targets", "regex"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
                raise TypeError(f"HookConfig.{name} must be a tuple of strings, got {value!r}")
        for pattern in self.regex:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"HookConfig.regex: {pattern!r} is not a valid regular expression: {e}") from None
        if self.adapter_dtype is not None and self.adapter_dtype not in DTYPES:
            raise ValueError(f"HookConfig.adapter_dtype must be one of {DTYPES} or None, got {self.adapter_dtype!r}")

    @property
    def scale(self) -> float:
        return self.alpha / (self.rank ** 0.5 if self.rslora else self.rank)

    @property
    def leaves(self) -> tuple[str, ...]:
        """The leaf names adapted (``targets``, or the method's default when it is None)."""
        return DEFAULT_TARGETS[self.method] if self.targets is None else self.targets

    def selects(self, name: str) -> bool:
        """Does this config adapt the nn.Linear called ``name`` (its full dotted module name)?"""
        if self.regex:
            return any(re.search(p, name) for p in self.regex)
        return name.rsplit(".", 1)[-1] in self.leaves
