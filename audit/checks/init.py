"""init: the subject's *own* initial state against the paper's statement of it.

Every other check takes the state as given (paper_parity builds its reference from the subject's
tensors), so a wrong init that keeps the forward consistent passes them: an EVA whose A is
orthonormal but not the principal input directions, a PiSSA with all of S on one factor. Here each
layer's initial state is measured by ``init_claims`` of references/paper/<variant>.py, an
independent float64 statement up to the method's true ambiguities (signs, rotations within repeated
singular values, which random draw). Where peft has the method and the config, peft's own init is
judged by the same statement as a second reference (rows ``peft_<metric>``, reference findings).

How each kind of claim is judged (over all adapted layers of the cell):
- exact (B = 0, l = 1, C = A₀): the worst value must be 0; these hold bit-exactly in any precision.
- deterministic (PiSSA's split, DoRA's m, EVA's subspace): a relative discrepancy from the float64
  statement, ≤ SPREAD_FACTOR × max(spread, u). spread: the same claim on the statement's own tensors
  computed in float32, rounded to the run's dtype and stored in the subject's dtype (``init_reference`` under
  ``evaluated_in(float32)``), which carries the conditioning (a small singular gap amplifies a float32
  SVD's error); u: the unit round-off of the subject's tensors (an init computes in float32 at least).
  The worst layer is the one using most of its tolerance.
- distribution (LoRA's A, AntiPaSTO's δ): the draws of every layer mapped through the stated CDF
  and pooled; the KS statistic against U(0, 1) must be ≤ √(ln(2/α)/(2n)) at a false-alarm rate
  α = 1e-6 (so a seed sweep of correct code stays quiet), plus u for rounding the draws to the
  subject's dtype (which moves each PIT value by at most u·|x|·density ≤ u).
- kurtosis (a Gaussian statement with σ free): the draws standardised by each layer's own σ, pooled;
  their excess kurtosis must be within KS_Z standard errors √(24/n) of 0 (false-alarm rate KS_ALPHA);
  a uniform draw of the same spread sits at −1.2, out of reach of a KS test with σ fitted.
- lower (distinct HRA vectors): the smallest value must be ≥ the stated bound.
"""
from __future__ import annotations

import math

import torch

from references import paper
from references.paper import evaluated_in

from .. import choices
from ..cell import Cell, NotApplicable
from ..numerics import SPREAD_FACTOR, keep_worst, unit_roundoff
from ..state import modules_named
from .. import calibration_mask
from ..subjects import Adapted, NotSupported, ShapeMismatch, canonical_weight
from ..subjects.handle import is_conv1d

KS_ALPHA = 1e-6  # false-alarm rate of one distribution row
KS_Z = 4.8916  # the two-sided standard-normal quantile at KS_ALPHA, for the kurtosis rows (sample kurtosis ~ N(3, 24/n))


def ks_uniform(pit: torch.Tensor) -> float:
    """Kolmogorov–Smirnov statistic of ``pit`` against U(0, 1)."""
    x, _ = torch.sort(pit.clamp(0, 1).to(torch.float64))
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - x, x - (i - 1) / n).max())


def ks_critical(n: int, alpha: float = KS_ALPHA) -> float:
    """The KS statistic a correct draw of n exceeds with probability ≤ alpha (DKW bound)."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def _original(cell: Cell, names) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{layer: (W (d_out, d_in), b)} of the untouched base model."""
    out = {}
    for n, mod in modules_named(cell.base(), names).items():
        out[n] = (canonical_weight(mod).detach(), getattr(mod, "bias", None))
    return out


def layer_inputs(cell: Cell, names) -> dict[str, torch.Tensor]:
    """{layer: its calibration inputs (tokens, d_in)} on the base model, cached per cell base."""
    cache = cell._base_cache.setdefault("layer_inputs", {})
    todo = [n for n in names if n not in cache]
    if todo:
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in todo}
        mods = modules_named(cell.base(), todo)
        hooks = [m.register_forward_pre_hook(lambda m, a, _n=n: seen[_n].append(a[0].detach().reshape(-1, a[0].shape[-1])))
                 for n, m in mods.items()]
        try:
            with torch.no_grad():
                for batch in cell.calibration():
                    cell.logits(cell.base(), batch)
        finally:
            for h in hooks:
                h.remove()
        cache.update({n: torch.cat(v) for n, v in seen.items()})
    return {n: cache[n] for n in names}


def layer_gradients(cell: Cell, names) -> dict[str, torch.Tensor]:
    """{layer: ∂ℓ/∂W (d_out, d_in), float64} on the base model: the mean over the calibration batches of the
    gradient of their next-token cross-entropy (variants/_calibration.causal_lm_loss, the loss the method's
    statement is about), from autograd's weight gradients in the cell's dtype on a copy of the base (the
    variants' own path goes through the layers' output gradients instead). Cached per cell base."""
    from variants._calibration import causal_lm_loss, model_logits
    cache = cell._base_cache.setdefault("layer_gradients", {})
    todo = [n for n in names if n not in cache]
    if todo:
        model = cell.fresh_model()
        for p in model.parameters():
            p.requires_grad_(False)
        mods = modules_named(model, todo)
        for m in mods.values():
            m.weight.requires_grad_(True)
        batches = cell.calibration()
        total = {n: torch.zeros_like(canonical_weight(m), dtype=torch.float64) for n, m in mods.items()}
        for batch in batches:
            loss = causal_lm_loss(model_logits(model, batch), batch)
            grads = torch.autograd.grad(loss, [m.weight for m in mods.values()])
            for (n, m), g in zip(mods.items(), grads):
                total[n] += (g.t() if is_conv1d(m) else g).to(torch.float64)  # Conv1D stores (d_in, d_out)
        cache.update({n: t / len(batches) for n, t in total.items()})
    return {n: cache[n] for n in names}


def _layer_data(cell: Cell, ref, names) -> dict[str, torch.Tensor]:
    """What the statement's init reads per layer: its calibration inputs, or (INIT_DATA "gradients") its loss
    gradient; none where the cell has no calibration."""
    if not cell.needs_calibration():
        return {}
    if getattr(ref, "INIT_DATA", "inputs") == "gradients":
        return layer_gradients(cell, names)
    return layer_inputs(cell, names)


def _claims(cell: Cell, handle: Adapted, ref, originals, inputs, options: dict | None = None) -> dict[str, list]:
    """{metric: [(claim, layer, tolerance or None)]} of one implementation's init, the statement taking
    the open-choice ``options`` (fields of the card's init choices)."""
    out: dict[str, list] = {}
    state = handle.state()
    for n in handle.names:
        w, b = originals[n]
        cfg = {**handle.cfg, **(options or {}), "r_layer": handle.rank(n)}
        x = inputs.get(n)
        claims = ref.init_claims(w, b, state[n], cfg, x)
        spread = {}
        if hasattr(ref, "init_reference") and any(c.kind == "deterministic" for c in claims):
            with evaluated_in(torch.float32):
                low = ref.init_reference(w, b, cfg, x)
            # rounded to the run's precision (an init may compute from and store in the base dtype),
            # then to the dtype the subject keeps the tensor in
            low = {k: v.detach().to(cell.dtype).to(state[n][k].dtype if k in state[n] else cell.dtype)
                   for k, v in low.items()}
            spread = {c.metric: c.value for c in ref.init_claims(w, b, {**state[n], **low}, cfg, x)}
        u = max(unit_roundoff(torch.float32), *(unit_roundoff(t.dtype) for t in state[n].values()
                                                 if t.dtype in (torch.float32, torch.bfloat16, torch.float16)))
        for c in claims:
            tol = SPREAD_FACTOR * max(spread.get(c.metric, 0.0), u) if c.kind == "deterministic" else None
            out.setdefault(c.metric, []).append((c, n, tol, u))
    return out


def _rows(cell: Cell, found: dict[str, list], prefix: str = "", reference: str = "paper init",
          about: str = "subject", choice: str = "") -> None:
    before = len(cell.rows)
    _claim_rows(cell, found, prefix, reference, about)
    for r in cell.rows[before:]:
        r.choice = choice


def _claim_rows(cell: Cell, found: dict[str, list], prefix: str, reference: str, about: str) -> None:
    for metric, entries in found.items():
        c0 = entries[0][0]
        name = f"{prefix}{metric}"
        if c0.kind == "exact":
            c, n, _, _ = max(entries, key=lambda e: e[0].value)
            cell.row(name, c.value, 0.0, message=f"claim: {c.statement} (exact); worst layer {n}",
                     reference=reference, about=about)
        elif c0.kind == "deterministic":
            worst: dict = {}
            for c, n, tol, _ in entries:
                keep_worst(worst, 0, (c.value, tol, n, c))
            value, tol, n, c = worst[0]
            cell.row(name, value, tol, message=f"claim: {c.statement}; relative to the float64 statement; tolerance "
                     f"{SPREAD_FACTOR:g} × max(float32 computation's spread, u); worst layer {n}",
                     reference=reference, about=about)
        elif c0.kind == "distribution":
            pit = torch.cat([c.pit.flatten() for c, _, _, _ in entries])
            u = max(e[3] for e in entries)
            cell.row(name, ks_uniform(pit), ks_critical(pit.numel()) + u,
                     message=f"claim: {c0.statement}; KS statistic of {pit.numel()} draws pooled over "
                             f"{len(entries)} layers; tolerance: critical value at α = {KS_ALPHA:g} + u",
                     reference=reference, about=about)
        elif c0.kind == "kurtosis":
            z = torch.cat([c.pit.flatten() for c, _, _, _ in entries]).to(torch.float64)
            bound = KS_Z * math.sqrt(24.0 / z.numel())
            cell.row(name, abs(float(z.pow(4).mean()) - 3.0), bound,
                     message=f"claim: {c0.statement}; |excess kurtosis| of {z.numel()} draws standardised per layer "
                             f"and pooled over {len(entries)} layers (a uniform draw: 1.2); tolerance: "
                             f"{KS_Z:.3g} standard errors √(24/n), a false-alarm rate of {KS_ALPHA:g}",
                     reference=reference, about=about)
        elif c0.kind == "lower":
            c, n, _, _ = min(entries, key=lambda e: e[0].value)
            cell.row(name, c.value, c.bound, op=">=", message=f"claim: {c.statement}; worst layer {n}",
                     reference=reference, about=about)
        else:
            raise ValueError(f"{metric}: unknown claim kind {c0.kind!r}")


def _peft_init(cell: Cell, names) -> Adapted | None:
    """peft's own init of this cell's config on a fresh base, when peft is a second reference."""
    from references.peft_bridge import PEFT_VARIANTS

    from ..subjects.peft import Peft
    if cell.subject.kind == "peft" or "peft" not in cell.card.references or cell.card.name not in PEFT_VARIANTS:
        return None
    if cell.dtype_name != "float32":
        return None  # peft's init in float32 is the second reference; in bf16 it only adds rounding
    if "peft_subject" not in cell._base_cache:  # one per base: keeps its EVA cache across cards and configs
        cell._base_cache["peft_subject"] = Peft()
    peft = cell._base_cache["peft_subject"]
    if peft.supports(cell.card.name):
        return None
    try:
        cfg = cell.config()
        cal = cell.calibration() if cell.needs_calibration() else None
        handle = Adapted(peft, peft.attach(cell.fresh_model(), cell.card.name, cfg, cal), cell.card.name, cfg)
        handle.require_layout()  # a ShapeMismatch here is a finding about peft (the caller's row)
    except NotSupported:
        return None  # peft has no such config (DeLoRA's frozen-copy init): the paper statement alone
    return handle if set(handle.names) == set(names) else None


def _declared_unsupported(cell: Cell) -> bool:
    """Does the card declare, as a deviation, that this subject cannot initialise this config at all
    (peft has no DeLoRA frozen-copy init)? Then that is a measured departure (a row), not an n/a."""
    return any(d.check == "init" and d.metric == "config_supported"
               and (d.subjects is None or cell.subject.kind in d.subjects) for d in cell.card.deviations)


def run(cell: Cell) -> None:
    ref = paper.get(cell.card.name)
    if not hasattr(ref, "init_claims"):
        raise NotApplicable(f"references/paper/{cell.card.name}.py states no init (init_claims)")
    try:
        with cell.shared() as adapted:
            _run(cell, ref, adapted)
    except NotSupported as e:  # the subject cannot attach this config (raised by the attach)
        if not _declared_unsupported(cell):
            raise
        cell.row("config_supported", 0.0, 1.0, op="==", message=f"the subject cannot run this config: {e}")
        return
    if cell.needs_calibration() and cell.dtype_name == (cell.first_dtype or cell.dtype_name):
        cfg = cell.config()
        calibration_mask.measure(cell, lambda cal: Adapted(
            cell.subject, cell.attach_subject(cell.fresh_model(), cfg, cal), cell.card.name, cfg).state())


def _nearest(cell: Cell, handle: Adapted, ref, originals, inputs) -> choices.Combo:
    """The combination of the card's init options whose statement ``handle``'s initial state satisfies:
    among those whose every row passes, the one using the least of its tolerances (a uniform draw also
    passes a Gaussian statement with σ free on few draws); when none passes, the nearest (least worst
    margin), under which it is then judged and fails."""
    opts = choices.of_kind(cell.card, "init")
    if not opts:
        return ()
    scored = []
    for i, combo in enumerate(choices.combos(opts)):
        before = len(cell.rows)
        _claim_rows(cell, _claims(cell, handle, ref, originals, inputs, choices.fields(combo)), "", "", "subject")
        rows = cell.rows[before:]
        del cell.rows[before:]
        worst = max((r.margin for r in rows if r.margin is not None), default=0.0)
        scored.append((any(r.status != "pass" for r in rows), worst, i, combo))
    return min(scored, key=lambda s: s[:3])[3]


def init_choice(cell: Cell) -> choices.Combo:
    """The init options the subject took on this cell (resolved once, on its initial state)."""
    if "init_choice" not in cell.memo:
        ref = paper.get(cell.card.name)
        with cell.shared() as adapted:
            originals = _original(cell, adapted.names)
            inputs = _layer_data(cell, ref, adapted.names)
            cell.memo["init_choice"] = _nearest(cell, adapted, ref, originals, inputs)
    return cell.memo["init_choice"]


def _run(cell: Cell, ref, adapted) -> None:
    names = adapted.names
    originals = _original(cell, names)
    inputs = _layer_data(cell, ref, names)
    if "init_choice" not in cell.memo:
        cell.memo["init_choice"] = _nearest(cell, adapted, ref, originals, inputs)
    combo = cell.memo["init_choice"]
    _rows(cell, _claims(cell, adapted, ref, originals, inputs, choices.fields(combo)), choice=choices.label(combo))
    try:
        twin = _peft_init(cell, names)
    except ShapeMismatch as e:  # peft's own init holds tensors of the wrong shapes: a finding about peft
        cell.row("peft_canonical_shape_mismatch", 1.0, 0.0, message=f"peft's own init: {e}", reference="peft",
                 about=cell.about("peft"))
        return
    if twin is not None:
        theirs = _nearest(cell, twin, ref, originals, inputs)
        _rows(cell, _claims(cell, twin, ref, originals, inputs, choices.fields(theirs)), prefix="peft_",
              reference="peft", about=cell.about("peft"), choice=choices.label(theirs))
