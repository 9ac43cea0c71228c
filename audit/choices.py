"""Choices a paper leaves open (cards' ``choices``): which option the subject made, and the formula under it.

Every option of an ``OpenChoice`` conforms. An *equation* choice is found at the cell's perturbed
state: each combination of options gives a float64 formula, and the one nearest the subject's layer
outputs and gradients (the largest relative error over layers and quantities) is the subject's;
every check that evaluates the formula (paper_parity, merge's W′, training's reference) then uses
it, and its rows say so (``Row.choice``). Two options differ by O(1) relative (a dropped gradient
term, another Kronecker order) and rounding by 1e-7 to 1e-2, so the nearest is unambiguous; a subject
that fits none is judged under the nearest, and fails there. An *init* choice is resolved by
audit/checks/init.py: the first combination (declared order) whose statement the initial state
satisfies, else the nearest.
"""
from __future__ import annotations

import itertools

import torch

from references import paper

from .cards import OpenChoice, Option, VariantCard
from .formula import formula_outputs, layer_args, projections, subject_outputs
from .numerics import rel_err
from .state import capture

Combo = tuple[tuple[OpenChoice, Option], ...]


def of_kind(card: VariantCard, kind: str) -> tuple[OpenChoice, ...]:
    return tuple(c for c in card.choices if c.resolved_by == kind)


def combos(choices: tuple[OpenChoice, ...]) -> list[Combo]:
    """Every combination of one option per choice, in declared order (the first: each choice's first option)."""
    return [tuple(zip(choices, opts)) for opts in itertools.product(*(c.options for c in choices))]


def fields(combo: Combo) -> dict:
    """The formula / statement parameters of a combination."""
    out: dict = {}
    for _, opt in combo:
        out.update(opt.fields)
    return out


def label(combo: Combo) -> str:
    """"name=option; ..." as rows carry it."""
    return "; ".join(f"{c.name}={o.id}" for c, o in combo)


def parse(text: str) -> dict[str, str]:
    """{choice name: option id} from a row's ``choice``."""
    return dict(part.split("=", 1) for part in text.split("; ") if "=" in part)


def made_by(card: VariantCard, who: str, kind: str = "equation") -> Combo | None:
    """The combination implementation ``who`` ("peft", "ours") is declared to make, None when a
    choice names no option of it."""
    out = []
    for c in of_kind(card, kind):
        opt = next((o for o in c.options if who in o.makers), None)
        if opt is None:
            return None
        out.append((c, opt))
    return tuple(out)


def formula_cfg(cell, adapted) -> tuple[dict, str]:
    """(the cfg the paper formula reads for this subject: ``adapted.cfg`` with the fields of the
    equation options it made, their label for the rows); resolved once per cell."""
    choices = of_kind(cell.card, "equation")
    if not choices:
        return adapted.cfg, ""
    if "equation_choice" not in cell.memo:
        cell.memo["equation_choice"] = resolve_equation(cell, choices)
    combo = cell.memo["equation_choice"]
    return {**adapted.cfg, **fields(combo)}, label(combo)


def errors(adapted, cfg: dict, seen: dict, seed: int, ref=None) -> list[float]:
    """The relative errors, per layer and per quantity (output, input gradient, each trainable tensor's
    gradient), between ``adapted``'s layers and the float64 formula under ``cfg``, in a fixed order."""
    ref = ref or paper.get(adapted.method)
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in adapted.names:
        x = seen[name][0]
        w, b, state = layer_args(adapted, name)
        t = torch.randn(x.shape[:-1] + (w.shape[0],), generator=g, dtype=torch.float64)
        got, trainable = subject_outputs(adapted, name, x, t)
        y, grads = formula_outputs(ref, x, w, b, state, cfg, trainable, t, project=projections(adapted, name))
        out += [rel_err(a, e) for a, e in zip(got, [y, *grads])]
    return out


def distance(adapted, cfg: dict, seen: dict, seed: int, ref=None) -> float:
    """The largest of ``errors``: how far the subject is from the formula under ``cfg``."""
    return max(errors(adapted, cfg, seen, seed, ref))


def nearest(adapted, choices: tuple[OpenChoice, ...], seen: dict, seed: int) -> Combo:
    """The combination whose formula is nearest ``adapted``, quantity by quantity: each option's error on
    each quantity over the best any option reaches there, the largest such ratio being the option's
    score. A quantity no option changes (an output every option gets equally wrong, as a departure
    elsewhere in the subject makes it) then weighs nothing, where the largest raw error would tie the
    options on it. Ties: an option the subject is declared to take, then the first declared."""
    options = combos(choices)
    errs = [errors(adapted, {**adapted.cfg, **fields(c)}, seen, seed) for c in options]
    floor = 1e-15
    best = [min(col) for col in zip(*errs)]
    kind = getattr(adapted.subject, "kind", "")

    def score(i: int) -> tuple:
        ratio = max(((e + floor) / (b + floor) for e, b in zip(errs[i], best)), default=1.0)
        declared = all(kind in o.makers for _, o in options[i])
        return (round(ratio, 9), not declared, i)
    return options[min(range(len(options)), key=score)]


def resolve_equation(cell, choices: tuple[OpenChoice, ...]) -> Combo:
    """The subject's equation options at the cell's perturbed state."""
    with cell.shared(perturbed=True) as adapted:
        with torch.no_grad():
            seen, _ = capture(adapted, lambda: cell.logits(adapted))
        return nearest(adapted, choices, seen, cell.seed + 53)


def differing(card: VariantCard, subject: str, other_combo: Combo | None) -> list[tuple[OpenChoice, Option, Option]]:
    """[(choice, the subject's option, the other implementation's)] where the two differ."""
    if not subject or other_combo is None:
        return []
    mine = parse(subject)
    return [(c, c.option(mine[c.name]), o) for c, o in other_combo if c.name in mine and mine[c.name] != o.id]
