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
from ..state import capture, perturb, snapshot
from .paper_parity import TOL_GRAD, TOL_OUT, worst_layer_rows

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


def _max_rel(ours: dict, theirs: dict) -> dict[str, float]:
    """{tensor name: worst rel err over layers} of two {layer: {tensor: tensor}} dicts."""
    out: dict[str, float] = {}
    for n, tensors in ours.items():
        for k, t in tensors.items():
            out[k] = max(out.get(k, 0.0), rel_err(t, theirs[n][k]))
    return out


def has_peft(card) -> bool:
    return "peft" in card.references and card.name in bridge.PEFT_VARIANTS


def peft_twin(cell: Cell, model, cfg: dict):
    """The peft model holding the same adapter state as ``model``, on a fresh copy of the base."""
    names = list(variants.state_of(model).targets)
    return bridge.build_peft_model(cell.fresh_model(), cell.card.name, cfg, names,
                                   snapshot(model, cell.variant.mutates_base_weight))


class _Antipasto3Port:
    """The antipasto3 port behind the paper-reference interface that layer_parity calls."""

    @staticmethod
    def forward(x, w, b, state, cfg):
        params, hp = antipasto3.from_torch_state(state, cfg, W_res=w)
        y = x @ antipasto3.to_torch_weight(params, hp).t()
        return y if b is None else y + b


def run(cell: Cell) -> None:
    card = cell.card
    if "antipasto3" in card.references:
        worst_layer_rows(cell, _Antipasto3Port, "antipasto3", "vs the antipasto3 port; ")
        return
    if not has_peft(card):
        raise NotApplicable("no external reference for this card")
    over = card.peft_config or {}
    model = cell.adapted(**over)
    perturb(model, cell.seed, card.perturb)
    cfg = cell.cfg(**over).to_dict()
    names = list(variants.state_of(model).targets)
    peft_model = peft_twin(cell, model, cfg)
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
        traj_state = max([traj_state, *_max_rel(snapshot(model), bridge.peft_state(peft_model, card.name, names)).values()])
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
        seen, _ = capture(peft_model, [f"base_model.model.{n}" for n in names], lambda: cell.logits(peft_model))
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
    cell.row("peft_layer_vs_paper_rel_err", out_err, TOL_OUT[cell.dtype_name], reference="peft", about="reference",
             message="peft's own layer outputs vs the paper formula (worst layer)")
    for k, err in sorted(grad_err.items()):
        cell.row(f"peft_grad_vs_undetached_paper[{k}]", err, TOL_GRAD[cell.dtype_name], reference="peft",
                 about="reference", message="peft's gradients vs the fully differentiated paper formula")
