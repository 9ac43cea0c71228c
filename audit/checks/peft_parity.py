"""peft_parity: the same adapter state in the other implementation, side by side (audit/twins.py).

The other implementation is peft (through the bridge) when ours or a third-party library is the
subject, and ours when peft is. The subject's perturbed state is copied into it three times on the
same base weights: in the run's precision, from a start jittered by one unit round-off, and in
float64 (the truth). Logits, every trainable tensor's model-level gradient, and a few Adam steps side
by side (logits and states along the trajectory) of the subject are judged against the float64
truth, with the tolerance set by how far the other implementation itself lands from it in the run's
precision (audit/numerics.py): agreeing with its rounding is not the claim, being as close to the
truth as it is. The trajectory runs in the plan's first dtype (float32 by default): in the others the
per-step arithmetic is judged by the logits and gradient rows. When peft is the reference, its layers are also audited against the paper formula
(outputs, and gradients vs the fully differentiated formula where the reference distinguishes
them): rows about the reference, reported as reference findings (float32 cells). AntiPaSTO (no peft method): every
layer's output and gradients vs the independent antipasto3 port.
"""
from __future__ import annotations

import torch

from references import antipasto3, paper
from references.peft_bridge import BridgeUnsupported

from ..cell import Cell, NotApplicable, rel_err
from ..choices import differing, fields, formula_cfg, label, made_by
from ..formula import formula_outputs, formula_spreads
from ..numerics import SMALL_TENSOR, describe, keep_worst, spread_tolerance, term_magnitudes
from ..state import capture
from ..twins import reference_name, twins
from .paper_parity import worst_layer_rows

STEPS, LR = 2, 1e-3  # two Adam steps: the second sees the first's moments (a few-step trajectory)
# Adam's ε, relative to the truth's first gradient (RMS over every trainable element), the same for every
# implementation. Why not torch's 1e-8: Adam moves element i by lr·g_i/(|g_i| + ε), whose sensitivity to
# g_i is lr·ε/(|g_i| + ε)² ≤ lr/ε. A gradient's rounding error is relative to the scale G of the terms it
# sums (u·G, not u·|g_i|), so an element whose sum cancels to |g_i| ≈ ε carries a relative error of
# u·G/ε and Adam hands it to the state almost whole: with G ≈ 1e-3 and ε = 1e-8 one element of a correct
# float32 LoHa moved 2e-7 from the truth (measured, seed 4), 8× the reference's spread, which a same-order
# reference never samples. With ε = EPS_REL·G the state's error from gradient rounding is at most
# lr·k·u/EPS_REL per element: rounding level, as the tolerance assumes. Elements with |g| ≫ G still take
# Adam's normalised step; the rest an SGD-like one; the same ε for every implementation, so a bug still
# moves the path as far as it moves the gradients.
EPS_REL = 1.0


def _loss(cell: Cell, adapted) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖logits − t‖² mean, the logits it was computed from)."""
    y = cell.logits(adapted)
    y64 = y.double()
    return ((y64 - cell.target(y64)) ** 2).mean(), y.detach()


class _Antipasto3Port:
    """The antipasto3 port behind the paper-reference interface that layer_parity calls."""

    @staticmethod
    def forward(x, w, b, state, cfg):
        params, hp = antipasto3.from_torch_state(state, cfg, W_res=w)
        y = x @ antipasto3.to_torch_weight(params, hp).t()
        return y if b is None else y + b


def _worst(ours: dict, truth: dict, refs: list[dict], dtype, scales: dict | None = None) -> dict[str, tuple]:
    """{tensor name: (error, tolerance, note)} at the layer with the largest error/tolerance, where
    ``ours``, ``truth`` and each of ``refs`` are {layer: {tensor: tensor}}; a tensor with a
    ``scales[layer][tensor]`` (Σ|terms|) is judged relative to it instead of to its truth."""
    out: dict[str, tuple[float, float, str]] = {}
    for n, tensors in ours.items():
        for k, t in tensors.items():
            scale = (scales or {}).get(n, {}).get(k)
            spreads = [rel_err(r[n][k], truth[n][k], scale) for r in refs]
            keep_worst(out, k, (rel_err(t, truth[n][k], scale), spread_tolerance(spreads, dtype),
                                describe(spreads, dtype) + (" (error / Σ|terms|)" if scale is not None else "")))
    return out


class _LayerTaps:
    """Records each adapted layer's input (before any adapter pre-hook) and the loss gradient at its output;
    at the base layer where the library does not call its adapter module (as state.capture does)."""

    def __init__(self, adapted, names):
        self.tiers: list[dict[str, list]] = [{}, {}]  # the adapted layer's records, the base layer's
        self.handles = []
        for n in names:
            for tier, mod in enumerate((adapted.layers[n], adapted.base_layer(n))):
                if tier and mod is adapted.layers[n]:
                    continue
                self.handles.append(mod.register_forward_pre_hook(self._pre(n, tier), prepend=True))
                self.handles.append(mod.register_forward_hook(self._hook(n, tier)))

    @property
    def seen(self) -> dict[str, list]:
        return {**self.tiers[1], **self.tiers[0]}  # the adapted layer's where it was called

    def _pre(self, n, tier):
        def hook(mod, args):
            self.tiers[tier][n] = [args[0].detach(), None]
        return hook

    def _hook(self, n, tier):
        def hook(mod, args, out):
            if out.requires_grad:
                out.register_hook(lambda g: self.tiers[tier][n].__setitem__(1, g.detach()))
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _term_scales(cell: Cell, truth, taps: _LayerTaps, cfg) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {small tensor: Σ|terms| of its model-level gradient}} on the float64 twin."""
    ref = paper.get(cell.card.name)
    states = truth.state()
    out = {}
    for n in truth.names:
        x, gy = taps.seen[n]
        state = states[n]
        small = [k for k, v in state.items() if v.numel() <= SMALL_TENSOR and truth.slots[n][k].trainable]
        if small and gy is not None:
            out[n] = term_magnitudes(ref, x, truth.weight(n), truth.bias(n), state, cfg, gy, small)
    return out


def run(cell: Cell) -> None:
    card = cell.card
    if "antipasto3" in card.references and cell.subject.kind != "peft":
        with cell.shared(perturbed=True) as adapted:
            worst_layer_rows(cell, adapted, _Antipasto3Port, "antipasto3", "vs the antipasto3 port; ",
                             spread_ref=paper.get(card.name))
        return
    other = reference_name(cell)
    if other is None:
        raise NotApplicable(f"no other implementation to compare {cell.subject.describe()} with")
    over = (card.peft_config or {}) if cell.subject.kind != "peft" else {}
    with cell.shared(perturbed=True, **over) as adapted:
        _run(cell, adapted, other, over)


def run_against(cell: Cell, other: str) -> None:
    """The side-by-side rows against the reference implementation ``other`` (lycoris_parity's)."""
    with cell.shared(perturbed=True) as adapted:
        _run(cell, adapted, other, {})


def _other_choices(cell: Cell, adapted, other: str) -> tuple[str, bool]:
    """(a note on the open choices where the subject and ``other`` take different options, whether their
    outputs differ): both conform (the card's choices), so side by side only what they share is compared."""
    _, mine = formula_cfg(cell, adapted)
    apart = differing(cell.card, mine, made_by(cell.card, other))
    if not apart:
        return "", False
    note = "; ".join(f"{c.name}: the subject takes '{m.label}', {other} '{o.label}'" for c, m, o in apart)
    return (f"{note} (both conform: the card's open choices; the subject is judged under its own by paper_parity)",
            any(c.affects == "outputs" for c, _, _ in apart))


def _run(cell: Cell, adapted, other: str, over: dict) -> None:
    card = cell.card
    cfg = adapted.cfg
    names = adapted.names
    apart, outputs_differ = _other_choices(cell, adapted, other)
    if outputs_differ:
        raise NotApplicable(apart)
    try:
        tw = twins(cell, adapted, other)
    except BridgeUnsupported as e:  # peft cannot hold this state here (its HRA takes no Conv1D layer)
        raise NotApplicable(f"no {other} twin: {e}") from None
    refs = ("ref", "ref_jittered")
    note = f"{other} run with {over}: {card.peft_config_reason}; " if over else ""
    label = f"{other} ({tw['ref'].subject.describe()})" if other == "peft" else other
    handles = {"subject": adapted, **tw}
    taps = _LayerTaps(tw["truth"], names)
    y = {}
    try:  # one forward per implementation gives the logits row and, backwards, the gradient rows
        for k, h in handles.items():
            for p in h.parameters():  # the state a library keeps outside the model too
                p.grad = None
            h.model.zero_grad(set_to_none=True)
            loss, y[k] = _loss(cell, h)
            loss.backward()
    finally:
        taps.remove()
    spreads = [rel_err(y[k], y["truth"]) for k in refs]
    cell.row("logits_rel_err", rel_err(y["subject"], y["truth"]), spread_tolerance(spreads, cell.dtype), reference=other,
             message=note + f"vs {label} in float64; " + describe(spreads, cell.dtype))

    if apart:  # the gradients differ by the open choice: the logits above are what the two share
        for metric in ("grad_rel_err", "trajectory_logits_rel_err", "trajectory_state_rel_err"):
            cell.row(metric, None, None, status="n/a", reference=other, message=apart)
    else:
        _gradients(cell, handles, tw, adapted, taps, refs, other, formula_cfg(cell, adapted)[0])
    if other != "ours" and cell.dtype_name == "float32":
        # the reference's layers vs the paper, a reference finding: in float32 only (its own low-precision
        # arithmetic is what `--subject peft` / `--subject lycoris` audits, in every dtype, as the subject)
        _reference_vs_paper(cell, tw["ref"], cfg, other)


def _gradients(cell: Cell, handles: dict, tw: dict, adapted, taps, refs: tuple, other: str, cfg: dict) -> None:
    """The model-level gradient rows, then the trajectory (in the plan's first dtype)."""
    scales = _term_scales(cell, tw["truth"], taps, cfg)
    # the twins' canonical gradients, as the subject's stored tensors can show them (transforms.py)
    grads = {k: {n: {t: adapted.slots[n][t].transform.project(g) for t, g in gs.items()} for n, gs in h.grads().items()}
             for k, h in tw.items()}
    worst = _worst(adapted.grads(), grads["truth"], [grads[r] for r in refs], cell.dtype, scales)
    for k, (err, tol, how) in sorted(worst.items()):
        scaled = any(k in sc for sc in scales.values())
        cell.row(f"grad_err_per_term_sum[{k}]" if scaled else f"grad_rel_err[{k}]", err, tol, reference=other,
                 message=f"model-level gradient of ‖logits − t‖², worst layer; {how}")

    if cell.first_dtype in (None, cell.dtype_name):
        _trajectory(cell, handles, tw, adapted, refs, other)
    else:  # the optimiser's path is compared in the plan's first dtype; in this one the per-step
        # arithmetic (the logits and gradient rows above) is what can differ, and is judged
        for metric in ("trajectory_logits_rel_err", "trajectory_state_rel_err"):
            cell.row(metric, None, None, status="n/a", reference=other,
                     message=f"the {STEPS}-step Adam trajectory is compared in {cell.first_dtype}; this dtype's "
                             "arithmetic is judged by the logits and gradient rows")


def _trajectory(cell: Cell, handles: dict, tw: dict, adapted, refs: tuple, other: str) -> None:
    """STEPS Adam steps side by side from the gradients already computed: logits and states along the way."""
    grads = [p.grad.double().flatten() for p in tw["truth"].parameters() if p.grad is not None]
    scale = float(torch.cat(grads).pow(2).mean().sqrt()) if grads else 0.0
    eps = EPS_REL * scale if scale > 0 else 1e-8  # no gradient at all: torch's default (nothing to amplify)
    opts = {k: torch.optim.Adam(h.parameters(), lr=LR, eps=eps) for k, h in handles.items()}
    logits_err: dict[str, float] = {k: 0.0 for k in ("subject", *refs)}
    state_worst: dict[str, tuple[float, float, str]] = {}
    for step in range(STEPS):
        y = {}
        for k, h in handles.items():  # step, then the loss (and logits) at the new state
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            if step + 1 < STEPS:  # the next step's gradient
                loss, y[k] = _loss(cell, h)
                loss.backward()
            else:
                with torch.no_grad():
                    y[k] = cell.logits(h)
        for k in logits_err:
            logits_err[k] = max(logits_err[k], rel_err(y[k], y["truth"]))
        states = {k: h.state() for k, h in tw.items()}
        trainable = {n: {k: v for k, v in st.items() if adapted.slots[n][k].trainable} for n, st in adapted.state().items()}
        for k, cur in _worst(trainable, states["truth"], [states[r] for r in refs], cell.dtype).items():
            keep_worst(state_worst, k, cur)
    spreads = [logits_err[r] for r in refs]
    cell.row("trajectory_logits_rel_err", logits_err["subject"], spread_tolerance(spreads, cell.dtype), reference=other,
             message=f"max over {STEPS} Adam steps (lr {LR}, ε {eps:.1e} = the truth's gradient RMS) run side by side; "
                     f"{describe(spreads, cell.dtype)}")
    err, tol, how = max(state_worst.values(), key=lambda v: v[0] / v[1])
    cell.row("trajectory_state_rel_err", err, tol, reference=other,
             message=f"adapter tensors after each of {STEPS} Adam steps, worst tensor; {how}")


def _reference_vs_paper(cell: Cell, peft, cfg: dict, who: str = "peft") -> None:
    """Audit the reference ``who`` itself: its layer outputs (and, where the card has an equation choice,
    its gradients) vs the paper formula under the options it is declared to take, on its own state,
    judged like paper_parity (float64 truth, the formula's spread in the run's precision)."""
    ref = paper.get(cell.card.name)
    combo = made_by(cell.card, who)
    cfg = {**cfg, **fields(combo or ())}
    with_grads = bool(combo)
    states = peft.state()
    with torch.no_grad():
        seen, _ = capture(peft, lambda: cell.logits(peft))
    worst: dict[str, tuple[float, float, str]] = {}

    def keep(metric, err, spreads):
        keep_worst(worst, metric, (err, spread_tolerance(spreads, cell.dtype), describe(spreads, cell.dtype)))

    g = torch.Generator().manual_seed(cell.seed + 13)
    for n in peft.names:
        x = seen[n][0]
        layer = peft.layers[n]
        bias = peft.bias(n)
        w, b = peft.weight(n).detach(), None if bias is None else bias.detach()
        state = states[n]
        t = torch.randn(x.shape[:-1] + (w.shape[0],), generator=g, dtype=torch.float64)
        trainable = []
        if with_grads:
            for p in peft.parameters():  # the state it keeps outside the model too
                p.grad = None
            (layer(x).double() * t).sum().backward()
            pg = peft.grads()[n]
            trainable = [k for k in state if k in pg]
        truth = formula_outputs(ref, x, w, b, state, cfg, trainable, t)
        with torch.no_grad():
            y_peft = layer(x)
        spreads = formula_spreads(ref, x, w, b, state, cfg, trainable, t, truth, cell.dtype, cell.seed + 29)
        keep(f"{who}_layer_vs_paper_rel_err", rel_err(y_peft, truth[0]), spreads["output_rel_err"])
        for k, g_ref in zip(trainable, truth[1][1:]):
            keep(f"{who}_grad_vs_paper[{k}]", rel_err(pg[k], g_ref), spreads[f"grad_rel_err[{k}]"])
    made = f" under {who}'s open choices ({label(combo)})" if combo else ""
    for metric, (err, tol, how) in sorted(worst.items()):
        what = (f"{who}'s own layer outputs vs the paper formula (worst layer)" if "_layer_" in metric
                else f"{who}'s gradients vs the paper formula (worst layer)")
        cell.row(metric, err, tol, reference=who, about="reference", message=f"{what}{made}; {how}",
                 choice=label(combo) if combo else "")
