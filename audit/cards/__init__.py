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

    def __post_init__(self):
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
    zero_grads: dict[str, ZeroGrad] = field(default_factory=dict)
    trainable_per_layer: Callable[[int, int, dict], int] | None = None  # (d_in, d_out, cfg) -> count
    invariants: tuple[Invariant, ...] = ()
    placement_roles: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    placement_source: str = "all projections (no paper restriction)"
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    peft_config: dict[str, Any] | None = None    # overrides for the peft comparison, with reason
    peft_config_reason: str = ""
    peft_extra: Callable[[Any], None] | None = None  # extra rows auditing peft itself (gets the cell)
    needs_calibration: bool = False
    bad_inputs: tuple[BadInput, ...] = ()
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)  # check -> dtype -> tol
    deviations: tuple[Deviation, ...] = ()
    perturb: dict[str, float] = field(default_factory=dict)  # tensor -> noise std for parity states
    notes: str = ""


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


def _discover() -> dict[str, VariantCard]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        card = importlib.import_module(f"{__name__}.{info.name}").CARD
        if "peft" in card.references:
            card = replace(card, deviations=card.deviations + PEFT_LOAD_DEVIATIONS)
        found[card.name] = card
    return found


CARDS: dict[str, VariantCard] = _discover()


def get(name: str) -> VariantCard:
    if name not in CARDS:
        raise ValueError(f"no card named {name!r}; cards: {sorted(CARDS)}")
    return CARDS[name]
