"""merge: the adapter merged into the weights computes what it computed unmerged, merging twice does not
add it twice, and unmerging gives the base weights and biases back.

peft's history has shipped merges that were wrong while the forward was right (a bias merged without
its scale; merging twice adding ΔW twice), which no forward check sees. At the cell's perturbed state
(the main config: alpha ≠ r where the method has a scale), on the subject's own merge:

- merged_vs_unmerged_logits_rel_err: the merged model's logits against the unmerged one's. Merging
  rounds W_eff to the run's dtype once, so the tolerance is the spread of the paper's merged model in
  that dtype (as is and jittered by one unit round-off) against its float64 truth, the same
  numbers paper_parity's logits_rel_err_vs_merged uses; a wrong merge is off by the size of ΔW.
- merged_weight_rel_err_vs_paper (and merged_bias_ where the paper merges the bias): the subject's
  merged weights against the paper's W′ (b′) from the state before the merge, tolerance from W′ computed
  in the run's dtype (as is and jittered). With the logits row it tells "forward right, merge wrong"
  (this row fails, the forward checks pass) from "forward wrong, merge right" (the reverse).
- merge_twice: a second merge is refused (raises) or changes nothing (bit-identical logits): 1.
- unmerge_weight_rel_err / unmerge_bias_rel_err: the adapted layers' weights and biases after
  unmerge against those before the merge (worst layer). Exact for a merge that keeps the originals;
  an unmerge that subtracts ΔW again or applies the inverse transform (peft) rounds: the tolerance is
  the spread of those round trips in the run's dtype (fl(fl(W + ΔW) − ΔW) with the subject's own ΔW,
  and fl(fl(W Q) Qᵀ) for an orthogonal Q), as is and jittered.
"""
from __future__ import annotations

import torch

from references import paper

from ..cell import Cell, NotApplicable, rel_err
from ..numerics import describe, jitter, keep_worst, spread_tolerance
from ..subjects import LayoutError, NotSupported
from ..choices import formula_cfg
from ..formula import layer_args
from .identity_at_init import base_reference
from .paper_parity import merged_reference


def _weights(adapted) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{layer: (canonical base weight, bias)} copies of the adapted layers' live base tensors."""
    out = {}
    for n in adapted.names:
        b = adapted.bias(n)
        out[n] = (adapted.weight(n).detach().clone(), None if b is None else b.detach().clone())
    return out


def _round_trip_spread(before: torch.Tensor, merged: torch.Tensor, dtype: torch.dtype, gen) -> list[float]:
    """How far the two correct ways to unmerge without a saved copy land from W in ``dtype``, as is and
    from a W jittered by one unit round-off: subtracting ΔW again, fl(fl(W + ΔW) − ΔW) (ΔW = merged −
    before, LoRA-like), and undoing a transform by its inverse, fl(fl(W Q) Qᵀ) for a seeded orthogonal
    Q of the row length (HRA, OFT: two products of that length). A bias is one row."""
    w, delta = before.double(), merged.double() - before.double()
    q, _ = torch.linalg.qr(torch.randn(w.shape[-1], w.shape[-1], generator=gen, dtype=torch.float64))
    d = delta.to(dtype)
    out = []
    for start in (w, jitter(w, dtype, gen)):
        out.append(rel_err(((start.to(dtype) + d) - d).double(), start))
        rows = start.reshape(-1, start.shape[-1])
        out.append(rel_err(((rows.to(dtype) @ q.to(dtype)) @ q.t().to(dtype)).double(), rows))
    return out


def _paper_weights(cell: Cell, adapted, ref, cfg: dict) -> dict[str, tuple]:
    """{layer: (W′, b′ of the paper's merged formula in float64, [their errors computed in the run's
    dtype, as is and from a start jittered by one unit round-off])} from the subject's state before the merge."""
    gen = torch.Generator().manual_seed(cell.seed + 47)
    out = {}
    for n in adapted.names:
        w, b, state = layer_args(adapted, n)
        w64, b64 = ref.merged(w.double(), None if b is None else b.double(),
                              {k: v.double() for k, v in state.items()}, cfg)
        spreads: dict[str, list[float]] = {"weight": [], "bias": []}
        for start in (None, gen):
            args = [v if start is None else jitter(v, cell.dtype, start) for v in (w, b)]
            st = {k: v if start is None else jitter(v, cell.dtype, start) for k, v in state.items()}
            try:
                with paper.evaluated_in(cell.dtype):
                    wl, bl = ref.merged(args[0].to(cell.dtype), None if b is None else args[1].to(cell.dtype), st, cfg)
            except (RuntimeError, NotImplementedError):  # an op without a kernel in this dtype (bf16 solve)
                with paper.evaluated_in(torch.float32):
                    wl, bl = ref.merged(args[0].float(), None if b is None else args[1].float(), st, cfg)
            spreads["weight"].append(rel_err(wl.to(cell.dtype), w64))
            if b64 is not None:
                spreads["bias"].append(rel_err(bl.to(cell.dtype), b64))
        out[n] = (w64, b64, spreads)
    return out


def _vs_paper(cell: Cell, merged: dict, paper_w: dict, choice: str) -> None:
    """The subject's merged weights (and biases) against the paper's W′ (b′) from the same state: a merge
    that computes another W′ than the forward does shows here, whatever the logits say."""
    worst: dict[str, tuple] = {}
    for n, (w, b) in merged.items():
        w64, b64, spreads = paper_w[n]
        keep_worst(worst, "merged_weight_rel_err_vs_paper", (rel_err(w, w64), spread_tolerance(spreads["weight"], cell.dtype),
                                                             describe(spreads["weight"], cell.dtype), n))
        if b64 is not None:
            got = torch.zeros_like(b64) if b is None else b
            keep_worst(worst, "merged_bias_rel_err_vs_paper", (rel_err(got, b64), spread_tolerance(spreads["bias"], cell.dtype),
                                                               describe(spreads["bias"], cell.dtype), n))
    for metric, (err, tol, how, n) in sorted(worst.items()):
        cell.row(metric, err, tol, reference="paper", choice=choice,
                 message=f"the subject's merged {metric.split('_')[1]} vs the paper's merged formula from the state before "
                         f"the merge, worst layer {n}; {how}")


def run(cell: Cell) -> None:
    subject = cell.subject
    semantics = subject.merge_semantics
    if semantics == "in_place" and not (subject.can("merge") and subject.can("unmerge")):
        raise NotApplicable(f"{subject.describe()} has no merge/unmerge")
    if semantics == "state_dict" and not subject.can("merge"):
        raise NotApplicable(f"{subject.describe()} declares a state-dict merge but has no merge")
    # the cell's perturbed model, not given back: a broken unmerge (or its bookkeeping) must not reach
    # another check
    with cell.shared(perturbed=True, keep=False) as adapted:
        _run(cell, subject, adapted, semantics)


def _merged_copy(cell: Cell, adapted, merged: dict) -> tuple[dict, torch.Tensor]:
    """A state-dict merge loaded into a copy of the base: (its adapted layers' weights, its logits)."""
    from ..state import modules_named
    from ..subjects import canonical_weight
    model = cell.fresh_model()
    missing = [k for k in merged if k not in model.state_dict()]
    if missing:
        raise NotSupported(f"the merged state dict names {missing[:3]}, not parameters of the base model")
    model.load_state_dict(merged, strict=False)
    mods = modules_named(model, adapted.names)
    weights = {n: (canonical_weight(m).detach().clone(), None if getattr(m, "bias", None) is None
                   else m.bias.detach().clone()) for n, m in mods.items()}
    return weights, cell.logits(model)


def _paper_side(cell: Cell, adapted) -> tuple[dict | None, list[float], str, str]:
    """(the paper's merged weights, the merged model's spreads, where the tolerance comes from, the subject's
    choices); where the subject's state has no canonical reading (a layout finding), no paper weights and the
    spread of one rounding of the adapted layers' weights in this dtype (the base model, jittered by one ulp):
    the merge is still judged against the subject's own unmerged model."""
    ref = paper.get(cell.card.name)
    try:
        cfg, choice = formula_cfg(cell, adapted)
        _, spreads = merged_reference(cell, adapted, ref, cfg)  # the float64 logits: paper_parity's row
        return (_paper_weights(cell, adapted, ref, cfg), spreads,
                f"tolerance from the paper's merged model in this dtype: {describe(spreads, cell.dtype)}", choice)
    except LayoutError as e:
        cell.layout_seen(e)
        _, (spread, _) = base_reference(cell, adapted.names)
        return None, [spread], ("tolerance from one rounding of the adapted layers' weights in this dtype (the "
                                f"paper's merged model needs the canonical state: {e}); "
                                + describe([spread], cell.dtype).replace("reference spread", "one-ulp spread")), ""


def _run(cell: Cell, subject, adapted, semantics: str) -> None:
    paper_w, spreads, how, choice = _paper_side(cell, adapted)
    before = _weights(adapted)
    with torch.no_grad():
        if semantics == "on_eval":  # the library merges when the model goes to eval(), unmerges on train()
            adapted.model.train()
        y = cell.logits(adapted)
        try:
            if semantics == "state_dict":
                merged, y_merged = _merged_copy(cell, adapted, subject.merge(adapted.model))
            else:
                adapted.model.eval() if semantics == "on_eval" else subject.merge(adapted.model)
                merged, y_merged = _weights(adapted), cell.logits(adapted)
        except NotSupported as e:
            raise NotApplicable(str(e)) from None
        if paper_w is not None:
            _vs_paper(cell, merged, paper_w, choice)
        else:
            cell.row("merged_weight_rel_err_vs_paper", None, None, status="n/a",
                     message="needs the subject's canonical state (layout finding)")
        cell.row("merged_vs_unmerged_logits_rel_err", rel_err(y_merged, y), spread_tolerance(spreads, cell.dtype),
                 reference="paper", message=f"{subject.describe()} ({semantics} merge): merged model vs the same state "
                                            f"unmerged; {how}")
        if semantics == "state_dict":
            for metric in ("merge_twice", "unmerge_weight_rel_err", "unmerge_bias_rel_err"):
                cell.row(metric, None, None, status="n/a", message=f"{subject.describe()} merges into a state dict: "
                                                                   "its model is never merged, so never unmerged")
            return
        try:
            adapted.model.eval() if semantics == "on_eval" else subject.merge(adapted.model)
            twice = float(torch.equal(cell.logits(adapted), y_merged))
            how = "a second merge was accepted and " + ("changed nothing" if twice else "changed the outputs")
        except Exception as e:  # noqa: BLE001 - a refusal (any clear exception) is the other right answer
            twice, how = 1.0, f"a second merge was refused: {type(e).__name__}: {str(e)[:120]}"
        cell.row("merge_twice", twice, 1.0, op="==", message=how)
        adapted.model.train() if semantics == "on_eval" else subject.unmerge(adapted.model)
    _unmerge_rows(cell, before, merged, _weights(adapted))


def _unmerge_rows(cell: Cell, before: dict, merged: dict, after: dict) -> None:
    """The adapted layers' weights and biases after merge + unmerge against those before (worst layer)."""
    gen = torch.Generator().manual_seed(cell.seed + 43)
    worst: dict[str, tuple] = {}
    for n, (w0, b0) in before.items():
        for metric, t0, t_merged, t1 in (("unmerge_weight_rel_err", w0, merged[n][0], after[n][0]),
                                         ("unmerge_bias_rel_err", b0, merged[n][1], after[n][1])):
            if t0 is None:
                continue
            spread = _round_trip_spread(t0, t_merged, cell.dtype, gen)
            keep_worst(worst, metric, (rel_err(t1, t0), spread_tolerance(spread, cell.dtype),
                                       describe(spread, cell.dtype), n))
    for metric, (err, tol, how, n) in sorted(worst.items()):
        what = "weight" if "weight" in metric else "bias"
        cell.row(metric, err, tol, message=f"{what} after merge + unmerge vs before, worst layer {n}; tolerance from "
                                           f"the round trips fl(fl(W + ΔW) − ΔW), fl(fl(W Q) Qᵀ) in this dtype: {how}")
