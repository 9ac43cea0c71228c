"""A Cell is one (card at one of its configs, model, dtype) a check runs on: models, inputs and helpers, all seeded."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator

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
    _lent: dict[tuple, "_Lent"] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)  # results several checks of this cell share
    layout_error: Exception | None = None  # the first LayoutError a check met and worked around (layout_seen)

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
        return schema.Config(**fields).to_dict(function_only=True) if schema is not None else fields

    def needs_calibration(self) -> bool:
        """Whether the subject's attach gets calibration batches: the method needs them, our variant takes
        them, or the method can use them and the subject is not ours (offered: its init may use them)."""
        v = self.variant
        offered = self.card.accepts_calibration and self.subject.kind != "ours"
        return self.card.needs_calibration or offered or bool(v is not None and v.needs_calibration)

    def attach(self, model: nn.Module, **overrides: Any) -> Adapted:
        """The subject attached its own way to ``model``: the canonical handle on it."""
        cfg = self.config(**overrides)
        cal = self.calibration() if self.needs_calibration() else None
        return Adapted(self.subject, self.attach_subject(model, cfg, cal), self.card.name, cfg)

    def attach_subject(self, model: nn.Module, cfg: dict, calibration) -> nn.Module:
        """The subject's own attach of this card's method, given the resolved targets where it takes them."""
        return self.subject.attach_with_targets(model, self.card.name, cfg, calibration, self.card.placement_roles)

    def adapted(self, **overrides: Any) -> Adapted:
        """A fresh copy of the base with the subject attached: the check's own, to change at will."""
        return self.attach(self.fresh_model(), **overrides)

    @contextmanager
    def shared(self, perturbed: bool = False, keep: bool = True, **overrides: Any) -> Iterator[Adapted]:
        """The cell's adapted model, attached once and lent to one check at a time: at init, or
        ``perturbed`` (state.perturb with the card's σ, as every check at a perturbed state uses).

        Each check used to attach its own copy of the same seeded state (about nine attaches per
        cell, each a deep copy of the base plus the method's init). On return, every parameter and
        buffer, its gradient (none) and requires_grad flag and every module's training mode are put
        back bit for bit, so the next check sees what a fresh attach gives it; a check that changed
        the model's structure (a tensor replaced or added, a hook left behind) has the model dropped,
        and the next borrower gets a fresh one (tests/test_lending.py: no audit row changes). ``keep``
        False: the borrower changes what a restore cannot see (a merge's bookkeeping) and the model is
        dropped after it, unconditionally."""
        from .state import perturb, perturb_raw
        from .subjects import LayoutError

        def make() -> Adapted:
            adapted = self.adapted(**overrides)
            if perturbed:
                try:
                    perturb(adapted, self.seed, self.card.perturb)
                except LayoutError as e:  # reported under "layout"; what reads no canonical state still runs
                    self.layout_seen(e)
                    perturb_raw(adapted, self.seed)
            return adapted
        with self._lend(("adapted", perturbed, tuple(sorted(overrides.items()))), make, keep=keep) as adapted:
            yield adapted

    @contextmanager
    def lent_base(self, dtype: torch.dtype | None = None, purpose: str = "") -> Iterator[nn.Module]:
        """A copy of the base model (cast to ``dtype``), lent like ``shared``: for a check that writes
        weights and reads the outputs (the paper's merged weights), or gives the model to the subject
        expecting a refusal (``purpose``: a separate copy, so the subject's code never touches the
        copy another check reads)."""
        def make() -> nn.Module:
            m = self.fresh_model()
            return m if dtype is None else m.to(dtype)
        # kept with the base model: every card and config of this model and dtype borrows the same copy
        with self._lend(("base", dtype, purpose), make, self._base_cache.setdefault("lent", {})) as model:
            yield model

    @contextmanager
    def _lend(self, key: tuple, make: Callable[[], Any], store: dict | None = None, keep: bool = True) -> Iterator[Any]:
        store = self._lent if store is None else store
        lent = store.pop(key, None)  # popped while lent: a nested borrow gets its own
        if lent is None:
            lent = _Lent(make())
        try:
            yield lent.obj
        finally:
            if keep and lent.restore():
                store[key] = lent

    def layout_seen(self, e: Exception) -> None:
        """A check met a state it cannot read canonically and went on without it (perturbed in the subject's own
        layout, or a row n/a): run_cell reports the layout finding once, as when a check stops on it."""
        if self.layout_error is None:
            self.layout_error = e

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
            message: str = "", reference: str = "", status: str | None = None, about: str = "subject",
            choice: str = "") -> Row:
        v = None if value is None else float(value)
        st = status or judge(v, op, tolerance)
        r = Row(self.card.name, self.check, self.model_name, self.dtype_name, metric, v, tolerance, st,
                message=message, op=op, reference=reference, about=about, config=self.card.config_id, choice=choice)
        self.rows.append(r)
        return r


class _Lent:
    """A model (or an Adapted handle on one) and what it must be given back as: its tensors' values and
    flags, its modules' training modes, and its structure (which tensors, hooks and attributes it has),
    to detect a change."""

    def __init__(self, obj: Adapted | nn.Module):
        self.obj = obj
        self.model = obj.model if isinstance(obj, Adapted) else obj
        model = self.model
        # the state a subject keeps outside the model is put back too
        outside = obj.subject.external_parameters(model) if isinstance(obj, Adapted) else []
        self.tensors = [(t, t.detach().clone(), t.requires_grad) for t in (*_tensors(model), *outside)]
        self.modes = [(m, m.training) for m in model.modules()]
        self.structure = _structure(model)

    def restore(self) -> bool:
        """Put the model back as it was lent; False (and nothing restored) when its structure changed."""
        model = self.model
        if _structure(model) != self.structure:
            return False
        with torch.no_grad():
            for t, saved, requires_grad in self.tensors:
                t.copy_(saved)
                t.grad = None
                t.requires_grad_(requires_grad)
        for m, training in self.modes:
            m.training = training
        return True


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _structure(model: nn.Module) -> tuple:
    """Which tensors (by identity, shape and dtype) and submodules it has, and which attributes and how
    many hooks of each kind every module has (an attach that was refused half-way shows here)."""
    def tensors(d: dict) -> tuple:
        return tuple((k, None) if t is None else (k, id(t), t.shape, t.dtype) for k, t in d.items())
    return tuple((id(m), tuple(m.__dict__), tensors(m._parameters), tensors(m._buffers), tuple(m._modules),
                  len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
                 for m in model.modules())
