"""paper_parity: at a seeded non-trivial adapter state, our hooked layers vs the paper formula (float64).

Per adapted layer: its output on the captured model input, and the gradients of a linear loss
⟨y, t⟩ (random t) w.r.t. every trainable adapter tensor and the layer input; plus the model's
logits vs the same model with each target's weight/bias replaced by the paper's merged weight.
Worst layer reported. The reference runs on the layer's live weight (W_res for PiSSA/AntiPaSTO).
"""
from __future__ import annotations

import copy

import torch

import variants
from references import paper

from ..cell import Cell, rel_err
from ..state import capture, perturb

TOL_OUT = {"float32": 2e-6, "bfloat16": 2 * 2.0 ** -8}
TOL_GRAD = {"float32": 2e-6, "bfloat16": 2 * 2.0 ** -8}
TOL_OUT_LOGITS = {"float32": 2e-6, "bfloat16": 4 * 2.0 ** -8}


def reference_state(mod) -> dict[str, torch.Tensor]:
    """Float64 leaf copies of a layer's adapter tensors (trainable ones require grad)."""
    return {k: v.detach().to(torch.float64).clone().requires_grad_(v.requires_grad)
            for k, v in variants.adapter_tensors(mod).items()}


def layer_parity(cell: Cell, ref, cfg: dict, name: str, mod, x: torch.Tensor) -> dict[str, float]:
    """{metric: rel err} for one layer: output, input grad and each trainable tensor's grad."""
    g = torch.Generator().manual_seed(cell.seed + 11)
    x_ours = x.clone().requires_grad_(True)
    y = mod(x_ours)
    t = torch.randn(y.shape, generator=g, dtype=torch.float64)
    params = {k: v for k, v in variants.adapter_tensors(mod).items() if v.requires_grad}
    (y.to(torch.float64) * t).sum().backward(inputs=[x_ours, *params.values()])

    state = reference_state(mod)
    x_ref = x.detach().to(torch.float64).requires_grad_(True)
    w = mod.weight.detach().to(torch.float64)
    b = None if mod.bias is None else mod.bias.detach().to(torch.float64)
    y_ref = ref.forward(x_ref, w, b, state, cfg)
    leaves = [x_ref, *(state[k] for k in params)]
    grads = torch.autograd.grad((y_ref * t).sum(), leaves, allow_unused=True)
    out = {"output_rel_err": rel_err(y, y_ref), "input_grad_rel_err": rel_err(x_ours.grad, grads[0])}
    for (k, p), gr in zip(params.items(), grads[1:]):
        gr = torch.zeros_like(state[k]) if gr is None else gr
        gp = torch.zeros_like(p) if p.grad is None else p.grad
        out[f"grad_rel_err[{k}]"] = rel_err(gp, gr)
        p.grad = None
    return out


def merged_model(model, ref, cfg: dict):
    """A copy of the base model whose target weights/biases are the paper's merged ones."""
    st = variants.state_of(model)
    clone = copy.deepcopy(model)
    variants.detach(clone)
    mods = dict(clone.named_modules())
    with torch.no_grad():
        for name, mod in st.targets.items():
            tgt = mods[name]
            state = {k: v.detach().to(torch.float64) for k, v in variants.adapter_tensors(mod).items()}
            b = None if mod.bias is None else mod.bias.to(torch.float64)
            w_eff, b_eff = ref.merged(mod.weight.to(torch.float64), b, state, cfg)
            tgt.weight.copy_(w_eff.to(tgt.weight.dtype))
            if b_eff is not None:
                if tgt.bias is None:
                    tgt.bias = torch.nn.Parameter(b_eff.to(tgt.weight.dtype), requires_grad=False)
                else:
                    tgt.bias.copy_(b_eff.to(tgt.bias.dtype))
    return clone


def worst_layer_rows(cell: Cell, ref, reference: str, note: str = ""):
    """Perturb a fresh adapter, run ``layer_parity`` against ``ref`` on every adapted layer, and
    append one row per metric for the worst layer. Returns (model, cfg) for further checks."""
    model = cell.adapted()
    perturb(model, cell.seed, cell.card.perturb)
    cfg = cell.cfg().to_dict()
    targets = variants.state_of(model).targets
    with torch.no_grad():
        seen, _ = capture(model, list(targets), lambda: cell.logits(model))
    worst: dict[str, tuple[float, str]] = {}
    for name, mod in targets.items():
        for metric, err in layer_parity(cell, ref, cfg, name, mod, seen[name][0]).items():
            if err >= worst.get(metric, (-1.0, ""))[0]:
                worst[metric] = (err, name)
    for metric, (err, name) in worst.items():
        grad = "grad" in metric
        tol = cell.tol(f"{cell.check}.grad" if grad else cell.check, TOL_GRAD if grad else TOL_OUT)
        cell.row(metric, err, tol, reference=reference, message=f"{note}worst layer {name}")
    return model, cfg


def run(cell: Cell) -> None:
    ref = paper.get(cell.card.name)
    model, cfg = worst_layer_rows(cell, ref, "paper")
    merged = merged_model(model, ref, cfg)
    with torch.no_grad():
        err = rel_err(cell.logits(model), cell.logits(merged))
    cell.row("logits_rel_err_vs_merged", err, cell.tol("paper_parity.logits", TOL_OUT_LOGITS), reference="paper",
             message="hooked model vs the model with the paper's merged weights")
