"""Twins: another implementation holding the subject's exact adapter state, for side-by-side parity.

The references of a subject are the paper formula and the *other* implementations: peft (through
the bridge in references/peft_bridge, which copies a canonical state into peft layers) for ours or
a third-party library, and ours (variants/) when peft itself is the subject. A twin is an
``Adapted`` handle on a fresh copy of the base model, so the checks read both sides alike.
"""
from __future__ import annotations


import torch

import variants
from references import peft_bridge as bridge

from . import models
from .numerics import jitter
from .subjects import LIBRARIES, Adapted, LayoutError
from .subjects.ours import Ours


def other_implementation(card, subject) -> str | None:
    """The implementation ``subject`` is compared with side by side on ``card``, or None."""
    if subject.kind == "peft":
        return "ours" if card.name in variants.REGISTRY else None
    if "peft" in card.references and card.name in bridge.PEFT_VARIANTS:
        return "peft"
    return None


def reference_name(cell) -> str | None:
    return other_implementation(cell.card, cell.subject)


def reference_names(card, subject) -> list[str]:
    """Every reference the subject is judged against on ``card``: the paper formula, then the other
    implementation (or the independent port)."""
    other = other_implementation(card, subject)
    ports = [r for r in card.references if r not in ("paper", "peft", subject.kind)
             and not (r == "antipasto3" and subject.kind == "peft")]
    return ["paper", *([other] if other else []), *ports]


def twin(cell, adapted: Adapted, other: str | None = None, dtype: torch.dtype | None = None) -> Adapted:
    """The reference implementation ``other`` (default ``reference_name``) holding ``adapted``'s state, on
    a fresh base (in ``dtype``, for a library whose state lives outside the model and cannot be copied)."""
    name, cfg = cell.card.name, adapted.cfg
    other = other or reference_name(cell)
    _same_layout(adapted)
    if other in LIBRARIES:
        return _library_twin(cell, adapted, other, dtype)
    if other == "peft":
        from .subjects.peft import Peft
        needs_weight = any(t.canonical == "weight" for t in bridge.MAPPINGS[name].tensors)
        model = bridge.build_peft_model(cell.base(), name, cfg, adapted.names,  # on a copy of the base
                                        adapted.state(with_weight=needs_weight), copy_model=models.clone)
        return _mapped(Adapted(Peft(), model, name, cfg))
    ours = Ours()
    cal = cell.calibration() if cell.needs_calibration() else None
    handle = _mapped(Adapted(ours, ours.attach(cell.fresh_model(), name, cfg, cal), name, cfg))
    if set(handle.names) != set(adapted.names):
        raise RuntimeError(f"ours adapted {sorted(set(handle.names) ^ set(adapted.names))} differently from the "
                           "subject: no side-by-side twin")
    _match_ranks(handle, adapted)
    handle.set_state(adapted.state(with_weight=variants.REGISTRY[name].mutates_base_weight))
    return handle


def _library_twin(cell, adapted: Adapted, other: str, dtype: torch.dtype | None) -> Adapted:
    """Another library's built-in subject attached to a fresh base (cast to ``dtype``) for the same targets,
    then holding ``adapted``'s canonical state."""
    from .subjects import LayerNotSupported, NotSupported, from_spec
    subject = from_spec(other)
    model = cell.fresh_model() if dtype is None else cell.fresh_model().to(dtype)
    try:
        attached = subject.attach_with_targets(model, cell.card.name, adapted.cfg, None, cell.card.placement_roles)
    except (LayerNotSupported, NotSupported) as e:
        raise bridge.BridgeUnsupported(f"{subject.describe()} cannot hold this state here: {e}") from None
    if dtype is not None:  # the library's own tensors too (it may create its adapters in float32 regardless)
        with torch.no_grad():
            for p in subject.external_parameters(attached):
                p.data = p.data.to(dtype)
    handle = _mapped(Adapted(subject, attached, cell.card.name, adapted.cfg))
    if set(handle.names) != set(adapted.names):
        raise bridge.BridgeUnsupported(f"{subject.describe()} adapted {sorted(set(handle.names) ^ set(adapted.names))} "
                                       "differently from the subject: no side-by-side twin")
    state = adapted.state()
    handle.set_state({n: {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in st.items()}
                      for n, st in state.items()})
    return handle


def _same_layout(adapted: Adapted) -> None:
    """A reference implementation lays a layer out by its own rule (the formula's ``layout``); a subject
    that chose another layout the method allows (LoKr factorising the dimensions otherwise) cannot be
    held by it: no twin (BridgeUnsupported), the subject is judged against the paper alone."""
    from references import paper
    ref = paper.get(adapted.method)
    for n in adapted.names:
        d_in, d_out = adapted.dims(n)
        rule = ref.layout(d_in, d_out, adapted.cfg)
        mine = {k: tuple(v.shape) for k, v in adapted.tensors(n).items()}
        if set(mine) != set(rule) or any(None not in rule[k] and mine[k] != tuple(rule[k]) for k in rule):
            raise bridge.BridgeUnsupported(
                f"the subject lays layer {n} out as {mine}, another of the {adapted.method} layouts the method "
                f"allows than the reference's {dict(rule)}: no side-by-side twin")


def _mapped(handle: Adapted) -> Adapted:
    """A reference twin maps onto the canonical layout by construction (the bridge's tensor map): a layout
    finding on it is the harness's error, never the subject's finding."""
    try:
        handle.require_layout()
    except LayoutError as e:
        raise RuntimeError(f"the {handle.subject.describe()} twin does not map onto the canonical layout: {e}") from None
    return handle


def _match_ranks(ours: Adapted, subject: Adapted) -> None:
    """Give ours' twin the subject's rank on every layer where a data-driven allocation (EVA's rank
    redistribution, rho > 1) gave them different ones: the twin holds the subject's state, whatever
    rank its own init would have chosen."""
    from variants._runtime import allocate, state_of
    st = state_of(ours.model)
    changed = False
    for n in ours.names:
        if ours.rank(n) != subject.rank(n):
            allocate(ours.layers[n], st.variant, st.cfg, subject.rank(n))
            changed = True
    if changed:
        ours.slots = {n: ours._slots(n, layer) for n, layer in ours.layers.items()}


def copy_of(handle: Adapted, dtype: torch.dtype | None = None) -> Adapted:
    """A deep copy of a twin (optionally cast to ``dtype``: float64 for the truth)."""
    model = models.clone(handle.model)
    if dtype is not None:
        model = model.to(dtype)
    return Adapted(handle.subject, model, handle.method, handle.cfg)


def twins(cell, adapted: Adapted, other: str | None = None) -> dict[str, Adapted]:
    """The reference ``other`` (default ``reference_name``) in the run's precision ("ref"), from a start
    jittered by one unit round-off ("ref_jittered"), and in float64 on the same (exactly representable)
    weights ("truth"). A library keeping its state outside the model is attached afresh for each."""
    ref = twin(cell, adapted, other)
    if ref.subject.external_parameters(ref.model):  # a copy of the model would not carry the state
        jittered, truth = twin(cell, adapted, other), twin(cell, adapted, other, torch.float64)
    else:
        jittered, truth = copy_of(ref), copy_of(ref, torch.float64)
    gen = torch.Generator().manual_seed(cell.seed + 23)
    with torch.no_grad():
        for p in jittered.parameters():
            if p.requires_grad:
                p.copy_(jitter(p, cell.dtype, gen))
    return {"ref": ref, "ref_jittered": jittered, "truth": truth}
