"""Variant cards: what each variant claims, as plain frozen data (one module per variant).

A card is the single source of truth the checks measure against: paper and equation, which
references apply, the config the audit uses, identity and gradient claims (with reasons), the
paper's invariants, placement, tolerances and declared deviations.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

from .. import library_versions

DeviationKind = Literal["xfail", "tolerance", "expected_raise"]


@dataclass(frozen=True)
class Deviation:
    """A known, sourced difference between the code and a reference, declared as data.

    It matches rows by check, metric (exact, or a prefix ending in '*'; alternatives joined by '|'),
    and optionally models and dtypes. xfail: a failing row becomes xfail and a passing one xpass
    (strict: the card must be updated); ``magnitude`` is the worst value the deviation covers (a
    failure beyond it stays a fail); it may be None only for rows judged by equality (counts,
    yes/no). tolerance: the row is re-judged with ``tolerance``. expected_raise: the row measures
    that something raises. A deviation that matches no row is an error.

    ``reference`` names who departs from the paper: "paper" (the card's own) means the method as
    specified deviates, and applies to whatever subject is audited (its verdict becomes partial);
    "peft" means peft departs: it applies to the rows about peft, which are reference findings when
    peft is a reference and the subject's own rows (partial) when peft is the subject.
    ``subjects`` lists the subject kinds ("ours", "peft", "third-party") under whose audit the
    deviation's rows exist (None: every kind); outside them it is neither applied nor required.

    Scope. ``releases`` (a PEP 440 specifier, e.g. ">=0.14,<0.18") limits a library's departure to the
    releases of the library ``reference`` names that have it: outside them it is neither applied nor
    required, so an older release without the behaviour is judged by the paper alone. ``configs``
    names config ids, and applies wherever the audited config has the same values (a ``--config`` that
    spells out a card config gets its deviations); ``when`` ties it to field values directly
    ({"use_cayley_neumann": False}), whatever the config is called.
    """

    id: str
    check: str
    metric: str
    reference: str
    kind: DeviationKind
    reason: str
    source: str
    tolerance: float | None = None
    magnitude: float | None = None
    models: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    subjects: tuple[str, ...] | None = None
    configs: tuple[str, ...] | None = None  # config ids it applies to (None: every config of the card)
    releases: str | None = None  # PEP 440 range of the ``reference`` library's releases that depart so
    when: dict[str, Any] | None = None  # config field values under which it applies

    def __post_init__(self):
        if self.releases is not None:
            if self.reference == "paper":
                raise ValueError(f"deviation {self.id!r}: the paper has no releases; releases= scopes a library's")
            library_versions.specifier(self.releases, f"deviation {self.id!r}")
        if self.kind == "xfail" and self.magnitude is None:
            raise ValueError(f"deviation {self.id!r}: an xfail must state the magnitude it covers")
        if self.kind == "tolerance" and self.tolerance is None:
            raise ValueError(f"deviation {self.id!r}: a tolerance deviation needs its tolerance")

    def matches(self, check: str, metric: str, model: str, dtype: str) -> bool:
        if check != self.check:
            return False
        ok = any(metric.startswith(m[:-1]) if m.endswith("*") else metric == m for m in self.metric.split("|"))
        return (ok and (self.models is None or model in self.models)
                and (self.dtypes is None or dtype in self.dtypes))

    def in_release(self) -> bool:
        """Does the installed release of the library this deviation describes have it?"""
        return self.releases is None or library_versions.in_range(
            self.releases, library_versions.installed(self.reference))

    def scope(self) -> str:
        """The release range and field values it is limited to, for reports ("" when it has none)."""
        parts = [f"{self.reference} {self.releases}"] if self.releases else []
        parts += [f"{k}={v!r}" for k, v in (self.when or {}).items()]
        return ", ".join(parts)

    def no_truth_for(self, row, subject_kind: str) -> bool:
        """Is ``row`` a side-by-side comparison of another subject with the library this deviation says departs
        (a peft_parity row of ours against peft)? Then that library is no truth for it: the row is n/a, naming
        the deviation (a correct subject must not fail, nor be called partial, for a reference's departure)."""
        return (self.reference != "paper" and subject_kind != self.reference and row.about == "subject"
                and row.reference == self.reference)

    def applies_to(self, row, subject_kind: str) -> bool:
        """Is ``row`` about the implementation this deviation describes (see the class docstring)?"""
        if self.reference == "peft":
            return (row.about == "reference" and row.reference == "peft") or (
                row.about == "subject" and subject_kind == "peft")
        return row.about == "subject"


@dataclass(frozen=True)
class ZeroGrad:
    """A tensor whose gradient is exactly zero at step 0 by design.

    fraction: the share of its entries that are dead (1.0: the whole tensor).
    stays_zero: True when it can never move (e.g. road_4's cos-θ: θ = 0 is a stationary point).
    """

    reason: str
    fraction: float = 1.0
    stays_zero: bool = False


@dataclass(frozen=True)
class Invariant:
    """A paper property measured on our implementation: ``measure(probe) -> float`` ≤ tolerance."""

    name: str
    description: str
    measure: Callable[[Any], float]
    tolerance: dict[str, float]  # dtype -> bound
    at: Literal["init", "perturbed"] = "perturbed"


@dataclass(frozen=True)
class BadInput:
    """A config (or attach situation) that must be refused with ``error`` (or a subclass), and whose
    message names the problem: one of the offending fields or its value. The wording is free.

    ``fields`` are config fields, except the key ``calibration_data`` which goes to attach.
    """

    fields: dict[str, Any]
    error: type[Exception]


@dataclass(frozen=True)
class Option:
    """One way of doing what the paper leaves open. ``fields`` are parameters of the paper formula or
    init statement (references/paper/<variant>.py reads them from its cfg; they are never given to the
    subject); ``makers`` the implementations known to take this option ("paper" where the paper names
    it, "peft", "ours", another library's name)."""

    id: str
    label: str
    source: str
    fields: dict[str, Any]
    makers: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenChoice:
    """A choice the paper leaves open: every option is conformant, and the audit says which one the
    subject made (audit/choices.py). ``resolved_by`` "equation": the option under which the float64
    formula matches the subject's layer outputs and gradients (every equation check then uses it);
    "init": the option whose init statement the subject's initial state satisfies. ``affects``: what
    another implementation taking another option computes differently ("gradients" only, or the
    "outputs" too), so side-by-side parity with it is compared only where they agree."""

    name: str
    what: str
    resolved_by: Literal["equation", "init"]
    options: tuple[Option, ...]
    affects: Literal["outputs", "gradients"] = "outputs"

    def option(self, option_id: str) -> Option:
        return next(o for o in self.options if o.id == option_id)


# checks that depend on the adapter's config; placement, robustness and timing measure the same thing
# under any config, save_load round-trips whatever tensors exist (the main config exercises its path),
# and training's loss curve adds nothing a config bug would not show in the parity checks first, so a
# further config runs only these (its ConfigCase may widen or narrow them)
CONFIG_CHECKS = ("identity_at_init", "init", "grad_flow", "paper_parity", "peft_parity", "properties")


@dataclass(frozen=True)
class ConfigCase:
    """One more config a card audits besides its main one: each is its own cell with its own rows.

    ``fields`` override the card's config; ``why`` says which setting it is (the paper's, a subject's
    defaults, a corner that matters). ``subject_defaults``: the config is the subject's own defaults
    for the method's fields (``Subject.default_config``), not the card's. ``zero_grads`` replaces the
    card's claims where the config changes them (None: the card's). ``models``, ``dtypes`` and
    ``checks`` narrow where the corner runs (cost): the plan's selection is intersected with them.
    """

    id: str
    fields: dict[str, Any]
    why: str
    subject_defaults: bool = False
    zero_grads: dict[str, "ZeroGrad"] | None = None
    # one model in float32 keeps the default audit within its time budget (the main config covers
    # every model and dtype): the toy MLP, biased and non-square (48→80→48) like the layers a config's
    # arithmetic (scales, ranks, inits, rotations) acts on, at a fifth of a decoder's cost
    models: tuple[str, ...] | None = ("mlp",)
    dtypes: tuple[str, ...] | None = ("float32",)
    checks: tuple[str, ...] | None = CONFIG_CHECKS
    origin: str | None = None  # the case this one stands in for (audit/init_fallback.py): its deviations apply


@dataclass(frozen=True)
class VariantCard:
    name: str
    paper: str
    arxiv: str
    equation: str
    config: dict[str, Any]                       # variants.config(name, **config) used on the zoo
    references: tuple[str, ...]                  # "paper", "peft", "antipasto3"
    identity: Literal["exact", "numeric", "offset"]
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per zoo model
    offset_tensors: tuple[str, ...] = ()          # "offset" identity: zero these to get identity
    # tensors with a zero gradient at step 0 by design; a function of the canonical config where
    # the claim depends on it (DeLoRA's init_style)
    zero_grads: dict[str, ZeroGrad] | Callable[[dict], dict[str, ZeroGrad]] = field(default_factory=dict)
    trainable_per_layer: Callable[[int, int, dict], int] | None = None  # (d_in, d_out, cfg) -> count
    invariants: tuple[Invariant, ...] = ()
    placement_roles: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    placement_source: str = "all projections (no paper restriction)"
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    peft_config: dict[str, Any] | None = None    # overrides for the peft comparison, with reason
    peft_config_reason: str = ""
    needs_calibration: bool = False
    # the method can use calibration data (a data-driven init) though it does not need it: offered to
    # every subject other than ours (whose variant says whether it takes it), so a library whose init
    # uses it is audited with it
    accepts_calibration: bool = False
    bad_inputs: tuple[BadInput, ...] = ()
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)  # check -> dtype -> tol
    deviations: tuple[Deviation, ...] = ()
    perturb: dict[str, float] = field(default_factory=dict)  # tensor -> noise std for parity states
    notes: str = ""
    internals: str = ""  # about this repo's own implementation: shown only when ours is the subject
    config_id: str = "main"                      # the id of ``config`` in rows, reports and the gate
    config_why: str = "the card's main config"
    configs: tuple[ConfigCase, ...] = ()          # further configs audited (the axes of the method)
    choices: tuple[OpenChoice, ...] = ()          # what the paper leaves open: every option conforms
    config_subject_defaults: bool = False         # set by at(): the config is the subject's own defaults

    def zero_grads_at(self, cfg: dict) -> dict[str, ZeroGrad]:
        """The zero-gradient claims under the canonical config ``cfg``."""
        return self.zero_grads(cfg) if callable(self.zero_grads) else self.zero_grads

    def cases(self) -> list[ConfigCase]:
        """Every config this card audits, the main one first (it runs everywhere the plan says)."""
        main = ConfigCase(self.config_id, {}, self.config_why, models=None, dtypes=None, checks=None)
        return [main, *self.configs]

    def case(self, config_id: str) -> ConfigCase:
        for c in self.cases():
            if c.id == config_id:
                return c
        raise ValueError(f"card {self.name!r} has no config {config_id!r}; configs: {[c.id for c in self.cases()]}")

    def at(self, case: "ConfigCase | str") -> "VariantCard":
        """This card as audited under ``case``: its config, zero-gradient claims and deviations."""
        case = self.case(case) if isinstance(case, str) else case
        config = {**self.config, **case.fields}
        return replace(self, config=config, config_id=case.id, config_why=case.why,
                       config_subject_defaults=case.subject_defaults,
                       zero_grads=self.zero_grads if case.zero_grads is None else case.zero_grads,
                       deviations=tuple(d for d in self.deviations if self._deviation_at(d, case, config)))

    def _deviation_at(self, d: Deviation, case: "ConfigCase", config: dict) -> bool:
        """Does ``d`` apply to the config ``case`` (whose values are ``config``)? By id, or by the values
        of the configs it names (not for the subject's own defaults, whose values the subject sets)."""
        if d.when and any(k not in config or config[k] != v for k, v in d.when.items()):
            return False
        if d.configs is None or case.id in d.configs or case.origin in d.configs:
            return True
        ids = {c.id: c for c in self.cases()}
        return not case.subject_defaults and any(
            c in ids and not ids[c].subject_defaults and {**self.config, **ids[c].fields} == config for c in d.configs)

    def with_case(self, case: ConfigCase) -> "VariantCard":
        """The card with one more config (``--config``), replacing one of the same id."""
        return replace(self, configs=tuple(c for c in self.configs if c.id != case.id) + (case,))


SUBJECT_DEFAULTS = ConfigCase(
    "defaults", {}, "the subject's own defaults for every method field (what a user who sets none gets)",
    subject_defaults=True)

# peft's own load path, whatever the method: declared once, for every card with a peft counterpart
PEFT_LOAD_DEVIATIONS = (
    Deviation("peft-load-missing-keys", "save_load", "missing_key_raises", "peft", "xfail",
              "PeftModel.from_pretrained loads an adapter checkpoint that lacks a tensor: the layer keeps its "
              "fresh init for it and peft only warns ('Found missing adapter keys')",
              "peft/peft_model.py PeftModel.load_adapter (warn on missing adapter keys)", magnitude=0.0,
              subjects=("peft",)),
    Deviation("peft-load-unexpected-keys", "save_load", "extra_key_raises", "peft", "xfail",
              "PeftModel.from_pretrained loads an adapter checkpoint with an extra tensor that matches no module "
              "without an error (set_peft_model_state_dict loads non-strictly)",
              "peft/utils/save_and_load.py set_peft_model_state_dict (load_state_dict strict=False)",
              magnitude=0.0, subjects=("peft",)),
)


def frozen_under_a_step(p, names: tuple[str, ...]) -> float:
    """For an invariant: how many of the layer's tensors ``names`` are trainable or move under one SGD step (lr 0.1)
    on every trainable tensor of the model, the loss being this layer's output (0: they stay frozen)."""
    import torch

    slots = p.adapted.slots[p.name]
    before = {k: slots[k].tensor.detach().clone() for k in names}
    trainable = sum(int(slots[k].trainable) for k in names)
    w = p.adapted.weight(p.name)
    x = torch.randn(4, w.shape[1], generator=torch.Generator().manual_seed(11), dtype=torch.float64).to(w.dtype)
    opt = torch.optim.SGD(p.adapted.parameters(), lr=0.1)
    opt.zero_grad(set_to_none=True)
    p.module(x).float().pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(trainable + sum(int(not torch.equal(before[k], slots[k].tensor.detach())) for k in names))


def peft_linear_only(method: str, source: str) -> Deviation:
    """peft refuses transformers' Conv1D for ``method`` (it adapts torch.nn.Linear only): on GPT-2 the
    peft subject's placement row measures it, and its other checks are n/a there."""
    return Deviation(f"peft-{method}-linear-only", "placement", "refused_target_fraction", "peft", "xfail",
                     f"peft's {method} adapts torch.nn.Linear only: it refuses GPT-2's transformers Conv1D projections "
                     "('Target module Conv1D(...) is not supported'), so a GPT-2-family model cannot take it",
                     source, magnitude=1.0, models=("gpt2",), subjects=("peft",))


def _discover() -> dict[str, VariantCard]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        card = importlib.import_module(f"{__name__}.{info.name}").CARD
        if "peft" in card.references:  # a card may scope one of them itself, under the same id
            own = {d.id for d in card.deviations}
            card = replace(card, deviations=card.deviations + tuple(d for d in PEFT_LOAD_DEVIATIONS if d.id not in own))
        found[card.name] = card
    return found


CARDS: dict[str, VariantCard] = _discover()


def get(name: str) -> VariantCard:
    if name not in CARDS:
        raise ValueError(f"no card named {name!r}; cards: {sorted(CARDS)}")
    return CARDS[name]
