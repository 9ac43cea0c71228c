"""A Cell is one (card at one of its configs, model, dtype) a check runs on: models, inputs and helpers, all seeded."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch
from torch import nn

import variants

from . import models
from .cards import VariantCard
from .numerics import rel_err  # noqa: F401 - the checks import it from here
from .rows import Row, judge
from .subjects import Adapted, Subject, as_subject

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NotApplicable(Exception):
    """Raised by a check when it does not apply to a cell; the message is the reason."""


@dataclass
class Cell:
    card: VariantCard
    subject: Subject  # a variants.Variant subclass is accepted too (run on our runtime)
    model_name: str
    dtype_name: str
    seed: int = 0
    device: str = "cpu"
    model_factory: Callable[[], nn.Module] | None = None
    check: str = ""
    first_dtype: str | None = None  # the plan's first audited dtype (set by the runner), for once-per-plan parts
    rows: list[Row] = field(default_factory=list)
    _base_cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.subject = as_subject(self.subject)

    @property
    def variant(self):
        """Our runtime's variant class for this card (the subject's, when the subject is ours)."""
        return getattr(self.subject, "variant_for", lambda m: variants.REGISTRY.get(m))(self.card.name)

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
        return models.clone(self._base())

    @cached_property
    def inputs(self) -> torch.Tensor:
        return models.example_inputs(self._base(), seed=self.seed).to(self.device)

    def calibration(self) -> list[torch.Tensor]:
        base = self._base()
        # 8 batches: peft's EVA cycles the data until its incremental PCA converges (tau 0.99), which
        # two batches reach only after ~60 passes; eight distinct ones after ~2
        return [models.example_inputs(base, batch=4, seed=self.seed + 100 + i).to(self.device) for i in range(8)]

    def config(self, **overrides: Any) -> dict:
        """The canonical config (a plain dict, references/STATE_LAYOUT.md) of this cell: the card's
        config (or, for a subject-defaults case, the subject's own defaults), its per-model overrides,
        then ``overrides``, with every field's default filled in from the config schema (our config
        classes)."""
        method = (self.subject.default_config(self.card.name) if self.card.config_subject_defaults
                  else self.card.config)
        fields = {**method, **self.card.model_overrides.get(self.model_name, {}),
                  "dtype": "float32", "seed": self.seed, **overrides}
        schema = self.variant or variants.REGISTRY.get(self.card.name)
        return schema.Config(**fields).to_dict() if schema is not None else fields

    def needs_calibration(self) -> bool:
        v = self.variant
        return self.card.needs_calibration or bool(v is not None and v.needs_calibration)

    def attach(self, model: nn.Module, **overrides: Any) -> Adapted:
        """The subject attached its own way to ``model``: the canonical handle on it."""
        cfg = self.config(**overrides)
        cal = self.calibration() if self.needs_calibration() else None
        return Adapted(self.subject, self.subject.attach(model, self.card.name, cfg, cal), self.card.name, cfg)

    def adapted(self, **overrides: Any) -> Adapted:
        return self.attach(self.fresh_model(), **overrides)

    def about(self, implementation: str) -> str:
        """"subject" when ``implementation`` (e.g. "peft") is the one under audit, else "reference"."""
        return "subject" if self.subject.kind == implementation else "reference"

    def logits(self, model, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of a model or of an Adapted handle's model."""
        model = model.model if isinstance(model, Adapted) else model
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
                message=message, op=op, reference=reference, about=about, config=self.card.config_id)
        self.rows.append(r)
        return r
