"""The paper formula evaluated next to a subject's layer: float64 truth, low-precision spread, the subject's side.

Shared by paper_parity (every layer against the formula), peft_parity (peft's layers against the
formula) and the open-choice resolution (audit/choices.py: which option's formula the subject
computes). The loss is linear, ⟨y, t⟩ with a seeded random t, so every gradient is a plain
vector-Jacobian product of the layer.
"""
from __future__ import annotations

import torch

from references import paper

from .numerics import jitter, rel_err


def formula_outputs(ref, x, w, b, state, cfg, trainable, t, dtype=torch.float64, gen=None, project=None):
    """(output, [grad wrt x, grads wrt the ``trainable`` state tensors]) of ``ref.forward`` and the
    loss ⟨y, t⟩, computed in ``dtype`` (inputs jittered by one unit round-off when ``gen`` is given).
    ``project``: {tensor: fn} mapping a canonical gradient onto what the subject's stored tensor can
    show (transforms.py: a full block whose skew part is the state)."""
    def leaf(v, grad):
        if v is None:
            return None
        v = v.detach() if gen is None else jitter(v, dtype, gen)
        if not v.is_floating_point():  # integer state (mask positions) is read as is
            return v
        return v.to(dtype).clone().requires_grad_(grad)
    xs = leaf(x, True)
    st = {k: leaf(v, k in trainable) for k, v in state.items()}
    with paper.evaluated_in(dtype):
        y = ref.forward(xs, leaf(w, False), leaf(b, False), st, cfg)
        leaves = [xs, *(st[k] for k in trainable)]
        grads = torch.autograd.grad((y * t.to(y.dtype)).sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads)]
    if project:
        grads = grads[:1] + [project.get(k, _same)(g) for k, g in zip(trainable, grads[1:])]
    return y.detach(), grads


def _same(g):
    return g


def formula_spreads(ref, x, w, b, state, cfg, trainable, t, truth, dtype, seed, scales=None, project=None):
    """{metric: [errors of the formula evaluated in ``dtype``, as is and from a jittered start]}
    against ``truth`` = (output, grads) in float64; ``scales`` as in ``metric_names``, ``project`` as in
    ``formula_outputs``."""
    out: dict[str, list[float]] = {}
    for gen in (None, torch.Generator().manual_seed(seed)):
        try:
            y, grads = formula_outputs(ref, x, w, b, state, cfg, trainable, t, dtype, gen, project)
        except (RuntimeError, NotImplementedError):  # an op without a kernel in this dtype (bf16 solve)
            y, grads = formula_outputs(ref, x, w, b, state, cfg, trainable, t, torch.float32, gen, project)
        for metric, val, exact, scale in zip(metric_names(trainable, scales), [y, *grads],
                                             [truth[0], *truth[1]], scales_of(trainable, scales)):
            out.setdefault(metric, []).append(rel_err(val, exact, scale))
    return out


def metric_names(trainable, scales=None) -> list[str]:
    """Metric per compared quantity; a small tensor whose gradient error is judged relative to its
    sum of term magnitudes (``scales``, numerics.term_magnitudes) is named grad_err_per_term_sum."""
    scales = scales or {}
    return ["output_rel_err", "input_grad_rel_err",
            *(f"grad_err_per_term_sum[{k}]" if k in scales else f"grad_rel_err[{k}]" for k in trainable)]


def scales_of(trainable, scales=None) -> list:
    """The Σ|terms| scale of each quantity in ``metric_names`` order (None: relative to its truth)."""
    return [None, None, *((scales or {}).get(k) for k in trainable)]


def subject_outputs(adapted, name: str, x: torch.Tensor, t: torch.Tensor) -> tuple[list[torch.Tensor], list[str]]:
    """The subject's side of a layer: ([output, grad wrt x, grads wrt its trainable tensors in canonical
    layout], their names) for the loss ⟨y, t⟩ on input ``x``; gradients are left cleared."""
    slots = adapted.slots[name]
    x_in = x.clone().requires_grad_(True)
    y = adapted.layers[name](x_in)
    params = {k: s.tensor for k, s in slots.items() if s.trainable}
    (y.to(torch.float64) * t).sum().backward(inputs=[x_in, *params.values()])
    out = [y.detach(), x_in.grad,
           *(slots[k].grad(p.grad) if p.grad is not None else torch.zeros_like(slots[k].canonical())
             for k, p in params.items())]
    for p in params.values():
        p.grad = None
    return out, list(params)


def layer_args(adapted, name: str) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """(live canonical weight, bias, canonical state) of one adapted layer, detached: the formula's inputs."""
    bias = adapted.bias(name)
    return (adapted.weight(name).detach(), None if bias is None else bias.detach(),
            {k: v.detach() for k, v in adapted.tensors(name).items()})


def projections(adapted, name: str) -> dict:
    """{tensor: fn} mapping each canonical gradient of one layer onto what its stored tensor can show."""
    return {k: s.transform.project for k, s in adapted.slots[name].items()}
