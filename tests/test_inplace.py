"""Output hooks that write into the base output (variants/_inplace.py): exact, and only when safe.

Each model is run twice: as attached (in place where allowed), and with a no-op forward hook put on
every target before attach, which makes the hooks fall back to out-of-place arithmetic. Outputs and
every adapter gradient must agree, and a hook registered before ours must still see the base output.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from audit import models
from audit.state import perturb
from conftest import attach, fresh
from variants._inplace import owns_output
from variants.lora import add_lowrank

# output-hook cases whose forward may write in place (lora family via add_lowrank, ia3 without grad, road)
CASES = ["lora", "pissa", "eva", "delora_peft", "ia3", "road", "road_4"]


def _noop(_m, _args, _out):
    return None


def _target_names(arch: str, case: str) -> list[str]:
    return list(variants.state_of(attach(fresh(arch), case)).targets)


def _adapted(arch: str, case: str, blocked: bool) -> nn.Module:
    """``case`` attached to a fresh ``arch`` and moved off init; ``blocked``: a no-op forward hook
    sits on every target before ours, so ours must not touch y (out-of-place fallback)."""
    model = fresh(arch)
    if blocked:
        modules = dict(model.named_modules())
        for name in _target_names(arch, case):
            modules[name].register_forward_hook(_noop)
    attach(model, case)
    perturb(model, 0, {"theta": 0.3, "alpha": 0.1})
    return model


@pytest.mark.parametrize("arch,case", [(a, c) for a in ("qwen3", "qwen2", "mlp", "gpt2") for c in CASES
                                       if not (a == "mlp" and c == "ia3")])  # the toy MLP has no k/v
def test_in_place_equals_out_of_place(arch, case):
    fast, slow = _adapted(arch, case, blocked=False), _adapted(arch, case, blocked=True)
    ids = models.example_inputs(fast, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(models.logits(fast, ids), models.logits(slow, ids), rtol=1e-6, atol=1e-7)
    for m in (fast, slow):
        models.logits(m, ids).square().mean().backward()
    grads = {n: p.grad for n, p in slow.named_parameters() if p.requires_grad}
    assert grads, "the adapter has trainable tensors"
    for n, p in fast.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-8, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("case", ["lora", "ia3", "road"])
def test_a_hook_registered_before_ours_sees_the_base_output(case):
    model = fresh("qwen3")
    layer = dict(model.named_modules())[_target_names("qwen3", case)[0]]
    seen = []
    layer.register_forward_hook(lambda m, args, out: seen.append((args[0].detach().clone(), out)))
    attach(model, case)
    perturb(model, 0, {"theta": 0.3, "alpha": 0.1})
    with torch.no_grad():
        models.logits(model, models.example_inputs(model, seed=3))
    x, y = seen[0]
    torch.testing.assert_close(y, nn.functional.linear(x, layer.weight, layer.bias), rtol=0, atol=0)


class _Cached(nn.Linear):
    """A Linear-like layer whose forward is not nn.Linear's (could alias or cache its output)."""

    def forward(self, x):
        return super().forward(x)


def test_owns_output_only_for_plain_linear_with_our_hook_alone():
    lin, x = nn.Linear(8, 6), torch.randn(3, 8)
    lin.register_forward_hook(_noop)
    y = lin(x)
    assert owns_output(lin, y, autograd=False) and owns_output(lin, y, autograd=True)
    assert not owns_output(lin, y.t(), autograd=False)  # not contiguous
    view = lin(torch.randn(2, 3, 8))  # a biased Linear on a 3-D input returns a view of its 2-D result
    assert view._base is not None
    assert owns_output(lin, view, autograd=False) and not owns_output(lin, view, autograd=True)
    lin.register_forward_hook(_noop)
    assert not owns_output(lin, y, autograd=False)  # a second hook has seen y
    sub = _Cached(8, 6)
    sub.register_forward_hook(_noop)
    assert not owns_output(sub, sub(x), autograd=False)
    handle = nn.modules.module.register_module_forward_hook(_noop)
    try:
        plain = nn.Linear(8, 6)
        plain.register_forward_hook(_noop)
        assert not owns_output(plain, plain(x), autograd=False)  # a global hook sees every output
    finally:
        handle.remove()


def test_owns_output_for_transformers_conv1d_without_autograd_only():
    from transformers.pytorch_utils import Conv1D

    class Sub(Conv1D):
        pass
    conv, x = Conv1D(6, 8), torch.randn(2, 3, 8)
    conv.register_forward_hook(_noop)
    y = conv(x)  # a view of the addmm result nothing else holds
    assert owns_output(conv, y, autograd=False) and not owns_output(conv, y, autograd=True)
    sub = Sub(6, 8)
    sub.register_forward_hook(_noop)
    assert not owns_output(sub, sub(x), autograd=False)  # a subclass may change what forward returns


@pytest.mark.parametrize("shape", [(5, 8), (2, 5, 8)])
@pytest.mark.parametrize("grad", [False, True])
def test_add_lowrank_writes_into_y_when_it_owns_it(shape, grad):
    lin = nn.Linear(8, 6, bias=False).requires_grad_(False)
    lin.register_forward_hook(_noop)
    h = torch.randn(*shape[:-1], 3, requires_grad=grad)
    b = torch.randn(6, 3, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y = lin(torch.randn(shape))
        expected = y.detach() + h.detach() @ b.detach().t()
        out = add_lowrank(y, h, b, lin)
    assert out is y  # no new (tokens × d_out) tensor
    torch.testing.assert_close(out.detach(), expected, rtol=1e-6, atol=1e-6)
    if grad:
        out.sum().backward()
        torch.testing.assert_close(b.grad, torch.ones(*shape[:-1], 6).reshape(-1, 6).t() @ h.detach().reshape(-1, 3))


def test_as_operand_skips_only_the_casts_promotion_makes_anyway():
    from variants._inplace import as_operand
    x16 = torch.randn(4, 3, dtype=torch.bfloat16)
    assert as_operand(x16, torch.float32) is x16  # bf16 ⊙ float32 is computed in float32 anyway
    x32 = torch.randn(4, 3)
    down = as_operand(x32, torch.bfloat16)  # float32 activations, bf16 adapter: computed in bf16
    assert down.dtype == torch.bfloat16 and down is not x32
    assert as_operand(torch.randn(2, dtype=torch.float16), torch.bfloat16).dtype == torch.bfloat16
