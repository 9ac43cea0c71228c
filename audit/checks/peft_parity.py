"""peft_parity: the same adapter state in the external reference (peft, or the antipasto3 port).

peft-backed variants: the state is copied into a peft model built on the same base weights; we
compare logits, every trainable tensor's gradient, and a few Adam steps side by side (logits and
states must stay together). The peft layers are also audited against the paper formula (outputs,
and gradients vs the fully differentiated formula where the reference distinguishes them), so a
place where peft itself departs from the paper shows up as a row the card must declare.
AntiPaSTO (no peft method): every layer's output and gradients vs the independent antipasto3 port.
"""
from __future__ import annotations

import inspect

import torch

import variants
from references import antipasto3, paper
from references import peft_bridge as bridge

from ..cell import Cell, NotApplicable, rel_err
from ..state import capture, perturb
from .paper_parity import TOL_GRAD, TOL_OUT, layer_parity

STEPS, LR = 3, 1e-3
TOL_LOGITS = {"float32": 2e-6, "bfloat16": 4 * 2.0 ** -8}
TOL_TRAJ = {"float32": 1e-5, "bfloat16": 4 * 2.0 ** -8}
# Model-level gradients backpropagate through every downstream op; in bf16 each rounds to u = 2⁻⁸
# and peft orders the adapter's ops differently (x→A→B then ·s), so the two differ by a few u
# (measured up to 1.8e-2 on the tiny zoo). Layer-level gradients (paper_parity) keep 2u.
TOL_MODEL_GRAD = {"float32": 2e-6, "bfloat16": 8 * 2.0 ** -8}


def _loss(cell: Cell, model) -> torch.Tensor:
    y = cell.logits(model).float()
    return ((y - cell.target(y)) ** 2).mean()


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


def _max_rel(ours: dict, theirs: dict, keys=None) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, tensors in ours.items():
        for k, t in tensors.items():
            if keys is not None and k not in keys:
                continue
            out[k] = max(out.get(k, 0.0), rel_err(t, theirs[n][k]))
    return out


def _states(model, with_weight: bool) -> dict[str, dict[str, torch.Tensor]]:
    st = variants.state_of(model)
    out = {}
    for n, m in st.targets.items():
        s = {k: v.detach().clone() for k, v in variants.adapter_tensors(m).items()}
        if with_weight:
            s["weight"] = m.weight.detach().clone()
        out[n] = s
    return out


def _antipasto3(cell: Cell) -> None:
    model = cell.adapted()
    perturb(model, cell.seed, cell.card.perturb)
    cfg = cell.cfg().to_dict()
    targets = variants.state_of(model).targets
    with torch.no_grad():
        seen = capture(model, list(targets), lambda: cell.logits(model))

    class Port:  # the port exposed with the paper-reference interface used by layer_parity
        @staticmethod
        def forward(x, w, b, state, cfg_):
            params, hp = antipasto3.from_torch_state(state, cfg_, W_res=w)
            y = x @ antipasto3.to_torch_weight(params, hp).t()
            return y if b is None else y + b

    worst: dict[str, tuple[float, str]] = {}
    for name, mod in targets.items():
        for metric, err in layer_parity(cell, Port, cfg, name, mod, seen[name][0]).items():
            if err >= worst.get(metric, (-1.0, ""))[0]:
                worst[metric] = (err, name)
    for metric, (err, name) in worst.items():
        tol = (TOL_GRAD if "grad" in metric else TOL_OUT)[cell.dtype_name]
        cell.row(metric, err, tol, reference="antipasto3", message=f"vs the antipasto3 port; worst layer {name}")


def run(cell: Cell) -> None:
    card = cell.card
    if "antipasto3" in card.references:
        return _antipasto3(cell)
    if "peft" not in card.references or card.name not in bridge.PEFT_VARIANTS:
        raise NotApplicable("no external reference for this card")
    over = card.peft_config or {}
    model = cell.adapted(**over)
    perturb(model, cell.seed, card.perturb)
    cfg = cell.cfg(**over).to_dict()
    names = list(variants.state_of(model).targets)
    peft_model = bridge.build_peft_model(cell.fresh_model(), card.name, cfg, names,
                                         _states(model, cell.variant.mutates_base_weight))
    note = f"peft run with {over}: {card.peft_config_reason}" if over else "same state copied into peft"
    with torch.no_grad():
        y_ours, y_peft = cell.logits(model), cell.logits(peft_model)
    cell.row("logits_rel_err", rel_err(y_ours, y_peft), TOL_LOGITS[cell.dtype_name], reference="peft", message=note)

    model.zero_grad(set_to_none=True)
    peft_model.zero_grad(set_to_none=True)
    _loss(cell, model).backward()
    _loss(cell, peft_model).backward()
    g_ours, g_peft = _our_grads(model), _peft_grads(peft_model, card.name, names)
    for k, err in sorted(_max_rel(g_ours, g_peft).items()):
        cell.row(f"grad_rel_err[{k}]", err, TOL_MODEL_GRAD[cell.dtype_name], reference="peft",
                 message="model-level gradient of ‖logits − t‖², worst layer")

    opt_o = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    opt_p = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=LR)
    traj_logits, traj_state = 0.0, 0.0
    for _ in range(STEPS):
        opt_o.step()
        opt_p.step()
        for m, o in ((model, opt_o), (peft_model, opt_p)):
            o.zero_grad(set_to_none=True)
            _loss(cell, m).backward()
        with torch.no_grad():
            traj_logits = max(traj_logits, rel_err(cell.logits(model), cell.logits(peft_model)))
        ours_s = {n: {k: v for k, v in s.items() if k != "weight"} for n, s in _states(model, False).items()}
        traj_state = max([traj_state, *_max_rel(ours_s, bridge.peft_state(peft_model, card.name, names)).values()])
    tol = TOL_TRAJ[cell.dtype_name]
    cell.row("trajectory_logits_rel_err", traj_logits, tol, reference="peft",
             message=f"max over {STEPS} Adam steps (lr {LR}) run side by side")
    cell.row("trajectory_state_rel_err", traj_state, tol, reference="peft",
             message=f"adapter tensors after each of {STEPS} Adam steps, worst tensor")
    _peft_vs_paper(cell, peft_model, names, cfg)
    if card.peft_extra is not None:
        card.peft_extra(cell)


def _peft_vs_paper(cell: Cell, peft_model, names: list[str], cfg: dict) -> None:
    """Audit peft itself: its layer outputs (and gradients) vs the paper formula on peft's own state."""
    ref = paper.get(cell.card.name)
    states = bridge.peft_state(peft_model, cell.card.name, names)
    layers = {n: bridge.peft_layer(peft_model, n) for n in names}
    with torch.no_grad():
        seen = capture(peft_model, [f"base_model.model.{n}" for n in names], lambda: cell.logits(peft_model))
    undetached = "detach_norm" in inspect.signature(ref.forward).parameters
    out_err, grad_err = 0.0, {}
    g = torch.Generator().manual_seed(cell.seed + 13)
    for n in names:
        x = seen[f"base_model.model.{n}"][0]
        layer = layers[n]
        base = layer.get_base_layer()
        w = base.weight.detach().to(torch.float64)
        b = None if base.bias is None else base.bias.detach().to(torch.float64)
        state = {k: v.detach().to(torch.float64) for k, v in states[n].items() if k != "weight"}
        with torch.no_grad():
            y_peft = layer(x)
        out_err = max(out_err, rel_err(y_peft, ref.forward(x.double(), w, b, state, cfg)))
        if undetached:
            t = torch.randn(y_peft.shape, generator=g, dtype=torch.float64)
            peft_model.zero_grad(set_to_none=True)
            (layer(x).double() * t).sum().backward()
            pg = _peft_grads(peft_model, cell.card.name, [n])[n]
            leaf = {k: v.clone().requires_grad_(True) for k, v in state.items() if k in pg}
            y_ref = ref.forward(x.double(), w, b, {**state, **leaf}, cfg, detach_norm=False)
            grads = torch.autograd.grad((y_ref * t).sum(), list(leaf.values()))
            for (k, _), gr in zip(leaf.items(), grads):
                grad_err[k] = max(grad_err.get(k, 0.0), rel_err(pg[k], gr))
    cell.row("peft_layer_vs_paper_rel_err", out_err, TOL_OUT[cell.dtype_name], reference="peft",
             message="peft's own layer outputs vs the paper formula (worst layer)")
    for k, err in sorted(grad_err.items()):
        cell.row(f"peft_grad_vs_undetached_paper[{k}]", err, TOL_GRAD[cell.dtype_name], reference="peft",
                 message="peft's gradients vs the fully differentiated paper formula")
