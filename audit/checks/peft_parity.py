"""peft_parity: the same adapter state in the external reference (peft, or the antipasto3 port).

peft-backed variants: the state is copied into peft models built on the same base weights: one in
the run's precision, one from a start jittered by one unit round-off, and one in float64 (the
truth). Logits, every trainable tensor's model-level gradient, and a few Adam steps side by side
(logits and states along the trajectory) of the subject are judged against the float64 truth,
with the tolerance set by how far peft itself lands from it in the run's precision
(audit/numerics.py): agreeing with peft's rounding is not the claim, being as close to the truth
as peft is. The peft layers are also audited against the paper formula (outputs, and gradients vs
the fully differentiated formula where the reference distinguishes them): rows about the
reference, reported as reference findings. AntiPaSTO (no peft method): every layer's output and
gradients vs the independent antipasto3 port.
"""
from __future__ import annotations

import copy
import inspect

import torch

import variants
from references import antipasto3, paper
from references import peft_bridge as bridge

from ..cell import Cell, NotApplicable, rel_err
from ..numerics import SMALL_TENSOR, describe, jitter, keep_worst, spread_tolerance, term_magnitudes
from ..state import capture, perturb, snapshot
from .paper_parity import formula_outputs, formula_spreads, worst_layer_rows

STEPS, LR = 3, 1e-3


def _loss(cell: Cell, model) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖logits − t‖² mean, the logits it was computed from)."""
    y = cell.logits(model)
    y64 = y.double()
    return ((y64 - cell.target(y64)) ** 2).mean(), y.detach()


def _our_grads(model) -> dict[str, dict[str, torch.Tensor]]:
    st = variants.state_of(model)
    return {n: {k: (v.grad if v.grad is not None else torch.zeros_like(v)).detach().clone()
                for k, v in variants.adapter_tensors(m).items() if v.requires_grad}
            for n, m in st.targets.items()}


def _peft_grads(peft_model, variant: str, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """peft's gradients mapped to canonical layout (read the state with .data swapped for .grad)."""
    saved = {}
    for p in peft_model.parameters():
        if p.requires_grad:
            saved[p] = p.data
            p.data = p.grad.detach() if p.grad is not None else torch.zeros_like(p.data)
    try:
        return bridge.peft_state(peft_model, variant, names)
    finally:
        for p, d in saved.items():
            p.data = d


def has_peft(card) -> bool:
    return "peft" in card.references and card.name in bridge.PEFT_VARIANTS


def peft_twin(cell: Cell, model, cfg: dict):
    """The peft model holding the same adapter state as ``model``, on a fresh copy of the base."""
    names = list(variants.state_of(model).targets)
    return bridge.build_peft_model(cell.base(), cell.card.name, cfg, names,  # build() deep-copies it
                                   snapshot(model, cell.variant.mutates_base_weight))


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
    """Records each named peft layer's input and the loss gradient at its output (float64 truth twin)."""

    def __init__(self, peft_model, names):
        self.seen: dict[str, list] = {}
        self.handles = [bridge.peft_layer(peft_model, n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, n):
        def hook(mod, args, out):
            self.seen[n] = [args[0].detach(), None]
            if out.requires_grad:
                out.register_hook(lambda g: self.seen[n].__setitem__(1, g.detach()))
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _term_scales(cell: Cell, truth_model, taps: _LayerTaps, names, cfg) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {small tensor: Σ|terms| of its model-level gradient}} on the float64 twin."""
    ref = paper.get(cell.card.name)
    states = bridge.peft_state(truth_model, cell.card.name, names)
    out = {}
    for n in names:
        x, gy = taps.seen[n]
        base = bridge.peft_layer(truth_model, n).get_base_layer()
        state = {k: v for k, v in states[n].items() if k != "weight"}
        small = [k for k, v in state.items() if v.numel() <= SMALL_TENSOR]
        if small and gy is not None:
            out[n] = term_magnitudes(ref, x, base.weight, base.bias, state, cfg, gy, small)
    return out


def _twins(cell: Cell, model, cfg: dict) -> dict:
    """peft holding ``model``'s state: in the run's precision ("peft"), from a start jittered by one
    unit round-off ("peft_jittered"), and in float64 on the same (exactly representable) weights
    ("truth"). The last two are copies of the first (jittering peft's tensors elementwise is jittering
    the canonical state: the bridge's layout maps only transpose and reshape)."""
    twin = peft_twin(cell, model, cfg)
    jittered, truth = copy.deepcopy(twin), copy.deepcopy(twin).double()
    gen = torch.Generator().manual_seed(cell.seed + 23)
    with torch.no_grad():
        for p in jittered.parameters():
            if p.requires_grad:
                p.copy_(jitter(p, cell.dtype, gen))
    return {"peft": twin, "peft_jittered": jittered, "truth": truth}


def run(cell: Cell) -> None:
    card = cell.card
    if "antipasto3" in card.references:
        worst_layer_rows(cell, _Antipasto3Port, "antipasto3", "vs the antipasto3 port; ", spread_ref=paper.get(card.name))
        return
    if not has_peft(card):
        raise NotApplicable("no external reference for this card")
    over = card.peft_config or {}
    model = cell.adapted(**over)
    perturb(model, cell.seed, card.perturb)
    cfg = cell.cfg(**over).to_dict()
    names = list(variants.state_of(model).targets)
    twins = _twins(cell, model, cfg)
    refs = ("peft", "peft_jittered")
    note = f"peft run with {over}: {card.peft_config_reason}; " if over else ""
    with torch.no_grad():
        y = {"ours": cell.logits(model), **{k: cell.logits(m) for k, m in twins.items()}}
    spreads = [rel_err(y[k], y["truth"]) for k in refs]
    cell.row("logits_rel_err", rel_err(y["ours"], y["truth"]), spread_tolerance(spreads, cell.dtype), reference="peft",
             message=note + describe(spreads, cell.dtype))

    models = {"ours": model, **twins}
    taps = _LayerTaps(twins["truth"], names)
    try:
        for m in models.values():
            m.zero_grad(set_to_none=True)
            _loss(cell, m)[0].backward()
    finally:
        taps.remove()
    scales = _term_scales(cell, twins["truth"], taps, names, cfg)
    grads = {k: _peft_grads(m, card.name, names) for k, m in twins.items()}
    worst = _worst(_our_grads(model), grads["truth"], [grads[r] for r in refs], cell.dtype, scales)
    for k, (err, tol, how) in sorted(worst.items()):
        scaled = any(k in sc for sc in scales.values())
        cell.row(f"grad_err_per_term_sum[{k}]" if scaled else f"grad_rel_err[{k}]", err, tol, reference="peft",
                 message=f"model-level gradient of ‖logits − t‖², worst layer; {how}")

    opts = {k: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=LR) for k, m in models.items()}
    logits_err: dict[str, float] = {k: 0.0 for k in ("ours", *refs)}
    state_worst: dict[str, tuple[float, float, str]] = {}
    for _ in range(STEPS):
        y = {}
        for k, m in models.items():  # step, then the loss (and logits) at the new state
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            loss, y[k] = _loss(cell, m)
            loss.backward()
        for k in logits_err:
            logits_err[k] = max(logits_err[k], rel_err(y[k], y["truth"]))
        states = {k: bridge.peft_state(m, card.name, names) for k, m in twins.items()}
        for k, cur in _worst(snapshot(model), states["truth"], [states[r] for r in refs], cell.dtype).items():
            keep_worst(state_worst, k, cur)
    spreads = [logits_err[r] for r in refs]
    cell.row("trajectory_logits_rel_err", logits_err["ours"], spread_tolerance(spreads, cell.dtype), reference="peft",
             message=f"max over {STEPS} Adam steps (lr {LR}) run side by side; {describe(spreads, cell.dtype)}")
    err, tol, how = max(state_worst.values(), key=lambda v: v[0] / v[1])
    cell.row("trajectory_state_rel_err", err, tol, reference="peft",
             message=f"adapter tensors after each of {STEPS} Adam steps, worst tensor; {how}")
    _peft_vs_paper(cell, twins["peft"], names, cfg)
    if card.peft_extra is not None:
        card.peft_extra(cell)


def _peft_vs_paper(cell: Cell, peft_model, names: list[str], cfg: dict) -> None:
    """Audit peft itself: its layer outputs (and gradients) vs the paper formula on peft's own state,
    judged like paper_parity (float64 truth, the formula's own spread in the run's precision)."""
    ref = paper.get(cell.card.name)
    states = bridge.peft_state(peft_model, cell.card.name, names)
    layers = {n: bridge.peft_layer(peft_model, n) for n in names}
    with torch.no_grad():
        seen, _ = capture(peft_model, [f"base_model.model.{n}" for n in names], lambda: cell.logits(peft_model))
    undetached = "detach_norm" in inspect.signature(ref.forward).parameters
    worst: dict[str, tuple[float, float, str]] = {}

    def keep(metric, err, spreads):
        keep_worst(worst, metric, (err, spread_tolerance(spreads, cell.dtype), describe(spreads, cell.dtype)))

    g = torch.Generator().manual_seed(cell.seed + 13)
    for n in names:
        x = seen[f"base_model.model.{n}"][0]
        layer = layers[n]
        base = layer.get_base_layer()
        w, b = base.weight.detach(), None if base.bias is None else base.bias.detach()
        state = {k: v.detach() for k, v in states[n].items() if k != "weight"}
        t = torch.randn(x.shape[:-1] + (w.shape[0],), generator=g, dtype=torch.float64)
        truth = formula_outputs(ref, x, w, b, state, cfg, [], t)
        with torch.no_grad():
            y_peft = layer(x)
        spreads = formula_spreads(ref, x, w, b, state, cfg, [], t, truth, cell.dtype, cell.seed + 29)
        keep("peft_layer_vs_paper_rel_err", rel_err(y_peft, truth[0]), spreads["output_rel_err"])
        if undetached:
            peft_model.zero_grad(set_to_none=True)
            (layer(x).double() * t).sum().backward()
            pg = _peft_grads(peft_model, cell.card.name, [n])[n]
            trainable = [k for k in state if k in pg]
            y_ref, gr = formula_outputs(_Undetached(ref), x, w, b, state, cfg, trainable, t)
            spread = formula_spreads(_Undetached(ref), x, w, b, state, cfg, trainable, t, (y_ref, gr), cell.dtype,
                                     cell.seed + 31)
            for k, g_ref in zip(trainable, gr[1:]):
                keep(f"peft_grad_vs_undetached_paper[{k}]", rel_err(pg[k], g_ref), spread[f"grad_rel_err[{k}]"])
    for metric, (err, tol, how) in sorted(worst.items()):
        what = ("peft's own layer outputs vs the paper formula (worst layer)" if metric.startswith("peft_layer")
                else "peft's gradients vs the fully differentiated paper formula")
        cell.row(metric, err, tol, reference="peft", about="reference", message=f"{what}; {how}")


class _Undetached:
    """The paper formula with its norm differentiated (``detach_norm=False``), as a reference."""

    def __init__(self, ref):
        self.ref = ref

    def forward(self, x, w, b, state, cfg):
        return self.ref.forward(x, w, b, state, cfg, detach_norm=False)
