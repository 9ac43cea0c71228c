"""C3A (arXiv 2407.19342): our variant, the paper formula, the peft bridge, peft's input gradient, the init."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import variants
from references import paper
from references import peft_bridge as bridge
from variants.c3a import BlockCirculant, dense_delta

ref = paper.get("c3a")


class Toy(nn.Module):
    """Two non-square layers 12→20→8 in blocks of 4 (3 × 5 and 5 × 2 block grids)."""

    def __init__(self, conv1d: bool = False):
        super().__init__()
        if conv1d:
            from transformers.pytorch_utils import Conv1D
            self.up, self.down = Conv1D(20, 12), Conv1D(8, 20)
            for m in (self.up, self.down):
                nn.init.normal_(m.weight, std=0.2)
                nn.init.normal_(m.bias, std=0.1)
        else:
            self.up, self.down = nn.Linear(12, 20), nn.Linear(20, 8)

    def forward(self, x):
        return self.down(self.up(x))


def _w(mod):
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


def _attach(conv1d=False, dtype="float64", **kw):
    torch.manual_seed(0)
    model = Toy(conv1d).to(getattr(torch, dtype))
    cfg = variants.config("c3a", **{"block_size": 4, "target_names": ("up", "down"), "dtype": dtype, **kw})
    variants.attach(model, cfg)
    with torch.no_grad():
        for m in (model.up, model.down):
            m.adapter_kernel.normal_(0, 1.0)
    return model, cfg


@pytest.mark.parametrize("conv1d", [False, True])
def test_forward_and_gradients_match_the_paper_formula(conv1d):
    model, cfg = _attach(conv1d)
    x = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    y = model.up(x)
    w, b = _w(model.up).detach(), model.up.bias.detach()
    k = model.up.adapter_kernel.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref = ref.forward(x2, w, b, {"kernel": k}, cfg.to_dict())
    assert torch.allclose(y, y_ref, rtol=0, atol=1e-12)
    assert (y_ref - x2 @ w.t() - b).abs().max() > 1e-2
    g = torch.randn_like(y)
    gk, gx = torch.autograd.grad((y * g).sum(), (model.up.adapter_kernel, x))
    gk_ref, gx_ref = torch.autograd.grad((y_ref * g).sum(), (k, x2))
    assert torch.allclose(gk, gk_ref, rtol=0, atol=1e-11)
    assert torch.allclose(gx, gx_ref, rtol=0, atol=1e-11)  # the input gradient too (peft's is wrong)


@pytest.mark.parametrize("shape", [(3, 2, 4), (2, 3, 5), (1, 1, 16), (4, 2, 1), (2, 2, 2), (3, 5, 7)])
def test_block_circulant_autograd_is_exact(shape):
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, shape[1] * shape[2], dtype=torch.float64, requires_grad=True)
    assert torch.allclose(BlockCirculant.apply(x, w), x @ dense_delta(w, 1).t(), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(BlockCirculant.apply, (x, w))
    assert torch.equal(dense_delta(w.detach(), 1), ref.circulant_blocks(w.detach()))


@pytest.mark.parametrize("b,wrong", [(4, True), (5, True), (2, False), (1, False)])
def test_pefts_input_gradient_is_the_correlation_not_the_transpose(b, wrong):
    """Declared deviation peft-c3a-input-grad: peft's BlockCircularConvolution.backward returns, as ∂L/∂x, the
    circular correlation of the output gradient with the kernel; the transpose of the forward's circulant is
    the convolution. They agree for b ≤ 2 only. The kernel gradient is right. Fails if peft fixes it."""
    from peft.tuners.c3a.utils import BlockCircularConvolution

    torch.manual_seed(1)
    w = torch.randn(3, 2, b, dtype=torch.float64)
    x = torch.randn(7, 2 * b, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 3 * b, dtype=torch.float64)
    y = BlockCircularConvolution.apply(x, w.clone().requires_grad_(True))
    assert torch.allclose(y, x @ ref.circulant_blocks(w).t(), atol=1e-12)  # the forward is the paper's
    gx_peft, = torch.autograd.grad((y * g).sum(), x)
    gx_true = g @ ref.circulant_blocks(w)
    err = float((gx_peft - gx_true).norm() / gx_true.norm())
    assert (err > 0.1) if wrong else (err < 1e-12), err
    wk = w.clone().requires_grad_(True)
    gw_peft, = torch.autograd.grad((BlockCircularConvolution.apply(x.detach(), wk) * g).sum(), wk)
    wk2 = w.clone().requires_grad_(True)
    gw_true, = torch.autograd.grad(((x.detach() @ ref.circulant_blocks(wk2).t()) * g).sum(), wk2)
    assert torch.allclose(gw_peft, gw_true, atol=1e-11)


def test_matches_peft_outputs_and_kernel_gradients():
    model, cfg = _attach(dtype="float32")
    torch.manual_seed(0)
    base = Toy().float()
    states = {n: {"kernel": getattr(model, n).adapter_kernel.detach().clone()} for n in ("up", "down")}
    pm = bridge.build_peft_model(base, "c3a", cfg.to_dict(), ["up", "down"], states)
    x = torch.randn(6, 12)
    assert torch.allclose(model(x), pm(x), rtol=1e-5, atol=1e-6)
    # the last layer's kernel gradient does not pass through a C3A input gradient: it must agree
    model(x).square().sum().backward()
    pm(x).square().sum().backward()
    g_peft = bridge.peft_layer(pm, "down").c3a_kernel["default"].grad
    assert torch.allclose(model.down.adapter_kernel.grad, g_peft, rtol=1e-4, atol=1e-5)


def test_merge_is_the_dense_block_circulant():
    model, _ = _attach()
    x = torch.randn(4, 12, dtype=torch.float64)
    want = model(x)
    variants.merge(model)
    assert torch.allclose(model(x), want, rtol=0, atol=1e-12)
    variants.unmerge(model)
    assert torch.allclose(model(x), want, rtol=0, atol=1e-12)


def test_init_statements():
    torch.manual_seed(0)
    model = Toy().double()
    variants.attach(model, variants.config("c3a", block_size=4, init_weights="zeros", dtype="float64", target_names=("up", "down")))
    assert model.up.adapter_kernel.abs().max() == 0
    torch.manual_seed(0)
    model = Toy().double()
    variants.attach(model, variants.config("c3a", block_size=4, dtype="float64", target_names=("up", "down")))  # xavier
    k = model.up.adapter_kernel
    bound = math.sqrt(6.0 / (12 + 20))
    assert k.abs().max() <= bound and k.abs().max() > 0.8 * bound
    claims = ref.init_claims(_w(model.up), None, {"kernel": k}, {"init_weights": "xavier_uniform"})
    assert claims[0].pit.min() >= 0 and claims[0].pit.max() <= 1


@pytest.mark.parametrize("b", [3, 8, 0])
def test_refuses_a_block_size_that_does_not_tile_the_layer(b):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="block_size"):
        variants.attach(Toy(), variants.config("c3a", block_size=b, target_names=("up", "down")))  # 3: not 20; 8: not 12, 20
    with pytest.raises(ValueError, match="init_weights"):
        variants.config("c3a", init_weights="orthogonal")
