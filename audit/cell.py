"""A Cell is one (card, model, dtype) a check runs on: models, inputs and helpers, all seeded."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch
from torch import nn

import variants
from variants import Variant

from . import models
from .cards import VariantCard
from .numerics import rel_err  # noqa: F401 - the checks import it from here
from .rows import Row, judge

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NotApplicable(Exception):
    """Raised by a check when it does not apply to a cell; the message is the reason."""


@dataclass
class Cell:
    card: VariantCard
    variant: type[Variant]
    model_name: str
    dtype_name: str
    seed: int = 0
    device: str = "cpu"
    model_factory: Callable[[], nn.Module] | None = None
    check: str = ""
    rows: list[Row] = field(default_factory=list)
    _base_cache: dict[str, Any] = field(default_factory=dict)

    # -- models --------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    def _base(self) -> nn.Module:
        """The base model, built once per cell (cached across checks by the runner)."""
        if "model" not in self._base_cache:
            if self.model_factory is not None:
                m = self.model_factory()
            else:
                m = models.build(self.model_name, seed=self.seed)
            self._base_cache["model"] = m.to(device=self.device, dtype=self.dtype).eval()
        return self._base_cache["model"]

    def base(self) -> nn.Module:
        """The cached base model itself: read it, never modify it (``fresh_model`` gives a copy)."""
        return self._base()

    def fresh_model(self) -> nn.Module:
        """An untouched copy of the base model (same weights every call)."""
        return copy.deepcopy(self._base())

    @cached_property
    def inputs(self) -> torch.Tensor:
        return models.example_inputs(self._base(), seed=self.seed).to(self.device)

    def calibration(self) -> list[torch.Tensor]:
        base = self._base()
        return [models.example_inputs(base, batch=4, seed=self.seed + 100 + i).to(self.device) for i in range(2)]

    def cfg(self, **overrides: Any):
        fields = {**self.card.config, **self.card.model_overrides.get(self.model_name, {}),
                  "dtype": "float32", "seed": self.seed, **overrides}
        return self.variant.Config(**fields)

    def attach(self, model: nn.Module, **overrides: Any) -> nn.Module:
        cal = self.calibration() if (self.card.needs_calibration or self.variant.needs_calibration) else None
        return variants.attach(model, self.cfg(**overrides), calibration_data=cal, variant=self.variant)

    def adapted(self, **overrides: Any) -> nn.Module:
        return self.attach(self.fresh_model(), **overrides)

    def logits(self, model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
        return models.logits(model, self.inputs if ids is None else ids)

    def target(self, logits: torch.Tensor) -> torch.Tensor:
        """A fixed random regression target (a loss ‖y − t‖² that is not rotation-invariant)."""
        g = torch.Generator().manual_seed(self.seed + 7)
        return torch.randn(logits.shape, generator=g).to(logits.device, logits.dtype)

    # -- rows ------------------------------------------------------------------------------------
    def tol(self, key: str, default: dict[str, float]) -> float:
        table = self.card.tolerances.get(key, {})
        return table.get(self.dtype_name, default.get(self.dtype_name, default.get("*")))

    def row(self, metric: str, value: float | None, tolerance: float | None, op: str = "<=",
            message: str = "", reference: str = "", status: str | None = None, about: str = "subject") -> Row:
        v = None if value is None else float(value)
        st = status or judge(v, op, tolerance)
        r = Row(self.card.name, self.check, self.model_name, self.dtype_name, metric, v, tolerance, st,
                message=message, op=op, reference=reference, about=about)
        self.rows.append(r)
        return r
