"""HiRA (ICLR 2025): our variant against the paper formula (Linear and Conv1D), the init, peft, and merge."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from references import paper
from references import peft_bridge as bridge

ref = paper.get("hira")
NAMES = ["up", "down", "sq"]


class Toy(nn.Module):
    """16 → 24 → 24 → 8 with a square middle layer: a Hadamard product with the stored Conv1D weight (W₀ᵀ) fails
    by shape on the non-square layers and silently on the square one."""

    def __init__(self, conv1d: bool = False):
        super().__init__()
        if conv1d:
            from transformers.pytorch_utils import Conv1D
            self.up, self.sq, self.down = Conv1D(24, 16), Conv1D(24, 24), Conv1D(8, 24)  # Conv1D(nf=d_out, nx=d_in)
            for m in (self.up, self.sq, self.down):
                nn.init.normal_(m.weight, std=0.2)
                nn.init.normal_(m.bias, std=0.1)
        else:
            self.up, self.sq, self.down = nn.Linear(16, 24), nn.Linear(24, 24), nn.Linear(24, 8)

    def forward(self, x):
        return self.down(torch.tanh(self.sq(self.up(x))))


def _w(mod):
    return (mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight).detach().double()


def _attach(model, dtype="float64", **kw):
    cfg = variants.config("hira", **{"r": 4, "target_names": (r"^(up|sq|down)$",), "dtype": dtype, **kw})
    return variants.attach(model, cfg), cfg


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in NAMES:
            for t in ("A", "B"):
                p = getattr(getattr(model, n), "adapter_" + t)
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_forward_and_gradients_match_the_paper_formula(conv1d):
    torch.manual_seed(0)
    ours, cfg = _attach(Toy(conv1d).double())
    _perturb(ours)
    for i, n in enumerate(NAMES):
        mod = getattr(ours, n)
        d_in = _w(mod).shape[1]
        x = torch.randn(5, d_in, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        st = {k: getattr(mod, "adapter_" + k).detach().clone().requires_grad_(True) for k in ("A", "B")}
        want = ref.forward(x, _w(mod), mod.bias.detach().double(), st, cfg.to_dict())
        got = mod(x)
        assert torch.allclose(got, want, atol=1e-12), (n, (got - want).abs().max())
        t = torch.randn_like(want)
        (want * t).sum().backward()
        (got * t).sum().backward()
        for k in ("A", "B"):
            assert torch.allclose(getattr(mod, "adapter_" + k).grad, st[k].grad, atol=1e-12), (n, k)
        assert float((want.detach() - x @ _w(mod).t() - mod.bias.double()).abs().max()) > 1e-3


def test_update_is_a_hadamard_product_with_the_base_weight():
    """ΔW vanishes exactly where W₀ does, and has full rank though B A has rank r (the paper's point)."""
    W = torch.randn(12, 10, dtype=torch.float64)
    W[3, :] = 0
    W[:, 7] = 0
    A, B = torch.randn(2, 10, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    dw = ref.delta(W, {"A": A, "B": B})
    assert torch.equal(dw[3], torch.zeros(10, dtype=torch.float64)) and not dw[:, 7].any()
    assert torch.linalg.matrix_rank(dw) > 2


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_init_is_exactly_the_base_and_A_gets_no_gradient(conv1d):
    torch.manual_seed(0)
    base = Toy(conv1d)
    ours, cfg = _attach(Toy(conv1d), dtype="float32")
    ours.load_state_dict(base.state_dict(), strict=False)
    x = torch.randn(4, 16)
    assert torch.equal(ours(x), base(x))
    ours(x).pow(2).sum().backward()
    for n in NAMES:
        mod = getattr(ours, n)
        assert not mod.adapter_A.grad.any() and mod.adapter_B.grad.norm() > 0
        claims = ref.init_claims(_w(mod), None, {"A": mod.adapter_A, "B": mod.adapter_B}, cfg.to_dict())
        assert claims[0].value == 0
        assert float(mod.adapter_A.detach().abs().max()) <= 1 / _w(mod).shape[1] ** 0.5  # U(±1/√d_in)


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_peft_computes_the_same_function_and_merges_alike(conv1d):
    torch.manual_seed(0)
    base = Toy(conv1d).double()
    ours, cfg = _attach(Toy(conv1d).double())
    ours.load_state_dict(base.state_dict(), strict=False)
    _perturb(ours)
    states = {n: {k: getattr(getattr(ours, n), "adapter_" + k).detach().clone() for k in ("A", "B")} for n in NAMES}
    pm = bridge.build_peft_model(base, "hira", {**cfg.to_dict(), "dtype": None}, NAMES, states)
    x = torch.randn(4, 16, dtype=torch.float64)
    with torch.no_grad():
        want = ours(x)
        assert torch.allclose(pm(x), want, atol=1e-12)
        variants.merge(ours)
        assert torch.allclose(ours(x), want, atol=1e-12)
        variants.unmerge(ours)
        assert torch.equal(ours(x), want)


def test_peft_round_trip_conv1d(tmp_path):
    ours, _ = _attach(Toy(True).double())
    _perturb(ours)
    variants.save_peft(ours, tmp_path)
    back = variants.load_peft(Toy(True).double(), tmp_path)
    for n in NAMES:
        for k in ("A", "B"):
            assert torch.equal(getattr(getattr(back, n), "adapter_" + k), getattr(getattr(ours, n), "adapter_" + k))


def test_alpha_is_refused():
    with pytest.raises(TypeError, match="alpha"):
        _attach(Toy(), alpha=2.0)
