"""paper_parity: at a seeded non-trivial adapter state, the subject's hooked layers vs the paper formula.

Per adapted layer: its output on the captured model input, and the gradients of a linear loss
⟨y, t⟩ (random t) w.r.t. every trainable adapter tensor and the layer input; plus the model's
logits vs the same model with each target's weight/bias replaced by the paper's merged weight.
Every number is an error against the float64 truth, judged against the formula's own spread in the
run's precision (audit/numerics.py); the layer with the largest error/tolerance is reported. The
reference runs on the layer's live weight (W_res for PiSSA/AntiPaSTO).
"""
from __future__ import annotations

import torch

from references import paper

from ..cell import Cell, rel_err
from ..choices import formula_cfg
from ..formula import (formula_outputs, formula_spreads, layer_args, metric_names, projections, scales_of,
                       subject_outputs)
from ..numerics import describe, jitter, keep_worst, spread_tolerance, term_magnitudes
from ..state import capture, modules_named
from ..subjects import canonical_weight


def layer_parity(cell: Cell, ref, cfg: dict, adapted, name: str, x: torch.Tensor, spread_ref=None) -> dict[str, tuple]:
    """{metric: (error vs float64 truth, tolerance, note)} for one adapted layer: output, input grad
    and each trainable tensor's grad. ``spread_ref`` (default ``ref``) is the formula whose
    evaluation in the run's precision sets the tolerance."""
    g = torch.Generator().manual_seed(cell.seed + 11)
    w, b, state = layer_args(adapted, name)
    t = torch.randn(x.shape[:-1] + (w.shape[0],), generator=g, dtype=torch.float64)
    ours, trainable = subject_outputs(adapted, name, x, t)
    proj = projections(adapted, name)
    truth = formula_outputs(ref, x, w, b, state, cfg, trainable, t, project=proj)
    scales = term_magnitudes(spread_ref or ref, x, w, b, state, cfg, t, trainable)
    spreads = formula_spreads(spread_ref or ref, x, w, b, state, cfg, trainable, t, truth, cell.dtype,
                              cell.seed + 17, scales, proj)
    out = {}
    for metric, val, exact, scale in zip(metric_names(trainable, scales), ours, [truth[0], *truth[1]],
                                         scales_of(trainable, scales)):
        out[metric] = (rel_err(val, exact, scale), spread_tolerance(spreads[metric], cell.dtype),
                       describe(spreads[metric], cell.dtype) + (" (error / Σ|terms|)" if scale is not None else ""))
    return out


def merged_model(cell: Cell, adapted, ref, cfg: dict, dtype: torch.dtype | None = None, gen=None, into=None):
    """A copy of the base model whose adapted layers' weights/biases are the paper's merged ones
    from ``adapted``'s state and live base weights, in ``dtype`` (default: the cell's), the merged
    weights jittered by one unit round-off when ``gen`` is given. ``into``: the copy of the base to
    write them into (default: a fresh one)."""
    clone = cell.fresh_model() if into is None else into
    if dtype is not None:
        clone.to(dtype)
    mods = modules_named(clone, adapted.names)
    states = adapted.state(with_weight=True)
    with torch.no_grad():
        for name in adapted.names:
            tgt = mods[name]
            state = {k: v.to(torch.float64) for k, v in states[name].items() if k != "weight"}
            bias = adapted.bias(name)
            b = None if bias is None else bias.detach().to(torch.float64)
            w_eff, b_eff = ref.merged(states[name]["weight"].to(torch.float64), b, state, cfg)
            if gen is not None:
                w_eff, b_eff = jitter(w_eff, tgt.weight.dtype, gen), jitter(b_eff, tgt.weight.dtype, gen)
            canonical_weight(tgt).copy_(w_eff.to(tgt.weight.dtype))
            if b_eff is not None:
                if tgt.bias is None:
                    tgt.bias = torch.nn.Parameter(b_eff.to(tgt.weight.dtype), requires_grad=False)
                else:
                    tgt.bias.copy_(b_eff.to(tgt.bias.dtype))
    return clone


def _merged_logits(cell: Cell, adapted, ref, cfg: dict, dtype: torch.dtype | None = None, gen=None) -> torch.Tensor:
    """The logits of ``merged_model``, on a copy of the base the cell lends (and restores)."""
    with cell.lent_base(dtype) as base:
        return cell.logits(merged_model(cell, adapted, ref, cfg, dtype, gen, into=base))


def merged_reference(cell: Cell, adapted, ref, cfg: dict) -> tuple[torch.Tensor, list[float]]:
    """(logits of the paper's merged model in float64, [its errors in the run's dtype, as is and with the
    merged weights jittered by one unit round-off]) for ``adapted`` at the cell's perturbed state (the
    state every cell.shared(perturbed=True) holds): computed once per cell."""
    if "merged_reference" not in cell.memo:
        gen = torch.Generator().manual_seed(cell.seed + 19)
        with torch.no_grad():
            truth = _merged_logits(cell, adapted, ref, cfg, torch.float64)
            spreads = [rel_err(_merged_logits(cell, adapted, ref, cfg, gen=gn), truth) for gn in (None, gen)]
        cell.memo["merged_reference"] = (truth, spreads)
    return cell.memo["merged_reference"]


def worst_layer_rows(cell: Cell, adapted, ref, reference: str, note: str = "", spread_ref=None, cfg=None,
                     choice: str = ""):
    """Run ``layer_parity`` against ``ref`` under ``cfg`` (default ``adapted.cfg``) on every layer of
    ``adapted`` (at the cell's perturbed state) and append one row per metric for the layer with the
    largest error/tolerance. Returns the model's logits."""
    cfg = adapted.cfg if cfg is None else cfg
    with torch.no_grad():
        seen, logits = capture(adapted, lambda: cell.logits(adapted))
    worst: dict[str, tuple] = {}
    for name in adapted.names:
        for metric, (err, tol, how) in layer_parity(cell, ref, cfg, adapted, name, seen[name][0], spread_ref).items():
            keep_worst(worst, metric, (err, tol, how, name))
    for metric, (err, tol, how, name) in worst.items():
        cell.row(metric, err, tol, reference=reference, message=f"{note}worst layer {name}; {how}", choice=choice)
    return logits


def run(cell: Cell) -> None:
    with cell.shared(perturbed=True) as adapted:
        _run(cell, adapted)


def _run(cell: Cell, adapted) -> None:
    ref = paper.get(cell.card.name)
    cfg, choice = formula_cfg(cell, adapted)
    made = f"the subject's open choices: {choice}; " if choice else ""
    logits = worst_layer_rows(cell, adapted, ref, "paper", made, cfg=cfg, choice=choice)
    truth, spreads = merged_reference(cell, adapted, ref, cfg)
    err = rel_err(logits, truth)
    cell.row("logits_rel_err_vs_merged", err, spread_tolerance(spreads, cell.dtype), reference="paper",
             message=f"{made}hooked model vs the model with the paper's merged weights; " + describe(spreads, cell.dtype),
             choice=choice)
