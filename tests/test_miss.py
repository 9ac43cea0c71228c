"""MiSS (arXiv 2409.15371): our variant against the paper formula in every form, the init, peft, and refusals."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from references import paper
from references import peft_bridge as bridge

ref = paper.get("miss")
NAMES = ["up", "down"]


class Toy(nn.Module):
    """16 → 24 → d_out: non-square layers (d_out = 16 where bat needs r | d_out)."""

    def __init__(self, conv1d: bool = False, d_out: int = 20):
        super().__init__()
        if conv1d:
            from transformers.pytorch_utils import Conv1D
            self.up, self.down = Conv1D(24, 16), Conv1D(d_out, 24)  # Conv1D(nf = d_out, nx = d_in)
            for m in (self.up, self.down):
                nn.init.normal_(m.weight, std=0.2)
                nn.init.normal_(m.bias, std=0.1)
        else:
            self.up, self.down = nn.Linear(16, 24), nn.Linear(24, d_out)

    def forward(self, x):
        return self.down(self.up(x))


def _w(mod):
    return (mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight).detach().double()


def _attach(model, **kw):
    cfg = variants.config("miss", **{"r": 8, "target_names": (r"^(up|down)$",), "dtype": "float64", **kw})
    return variants.attach(model, cfg), cfg


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in NAMES:
            d = getattr(model, n).adapter_D
            d.copy_(0.3 * torch.randn(d.shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("over,d_out", [({}, 20), ({"r": 5}, 20), ({"mode": "mini", "mini_r": 4}, 20),
                                         ({"mode": "bat"}, 16)], ids=["balance", "partial", "mini", "bat"])
def test_forward_and_gradient_match_the_paper_formula(conv1d, over, d_out):
    torch.manual_seed(0)
    base = Toy(conv1d, d_out).double()
    ours, cfg = _attach(Toy(conv1d, d_out).double(), **over)
    ours.load_state_dict(base.state_dict(), strict=False)
    _perturb(ours)
    x = torch.randn(3, 16, dtype=torch.float64)
    for n in NAMES:
        mod = getattr(ours, n)
        xin = x if n == "up" else torch.randn(3, 24, dtype=torch.float64)
        d = mod.adapter_D.detach().clone().requires_grad_(True)
        want = ref.forward(xin, _w(mod), mod.bias.detach().double(), {"D": d}, cfg.to_dict())
        got = mod(xin)
        assert torch.allclose(got, want, atol=1e-12), (n, (got - want).abs().max())
        t = torch.randn_like(want)
        (want * t).sum().backward()
        mod.adapter_D.grad = None
        (got * t).sum().backward()
        assert torch.allclose(mod.adapter_D.grad, d.grad, atol=1e-12)
        assert float((want.detach() - xin @ _w(mod).t() - mod.bias.double()).abs().max()) > 1e-3  # non-identity


def test_balance_delta_is_d_replicated_over_shards():
    """ΔW = [Dᵀ | Dᵀ | …]: column k is row k mod r of D, the last shard partial (paper §4.2, peft's zero padding)."""
    D = torch.randn(5, 7, dtype=torch.float64)
    dw = ref.delta(torch.zeros(7, 12, dtype=torch.float64), {"D": D}, {"mode": "balance"})
    assert torch.equal(dw[:, :5], D.t()) and torch.equal(dw[:, 5:10], D.t()) and torch.equal(dw[:, 10:], D.t()[:, :2])


def test_bat_blocks_are_indexed_by_the_output_block():
    """bat: block (i, j) is W_ij + W_ij B_i + B_i; a B indexed by the input block j computes something else."""
    W = torch.randn(8, 12, dtype=torch.float64)
    B = torch.randn(2, 4, 4, dtype=torch.float64)
    dw = ref.delta(W, {"D": B}, {"mode": "bat"})
    for i in range(2):
        for j in range(3):
            blk = W[4 * i:4 * i + 4, 4 * j:4 * j + 4]
            assert torch.allclose(dw[4 * i:4 * i + 4, 4 * j:4 * j + 4], blk @ B[i] + B[i])


@pytest.mark.parametrize("over", [{}, {"mode": "bat"}, {"mode": "mini", "mini_r": 4}])
def test_init_is_exactly_the_base_model(over):
    base = Toy(d_out=16).double()
    ours, cfg = _attach(Toy(d_out=16).double(), **over)
    ours.load_state_dict(base.state_dict(), strict=False)
    x = torch.randn(4, 16, dtype=torch.float64)
    assert torch.equal(ours(x), base(x))
    for n in NAMES:
        claims = ref.init_claims(_w(getattr(ours, n)), None, {"D": getattr(ours, n).adapter_D}, cfg.to_dict())
        assert all(c.value == 0 for c in claims)
    ours(x).pow(2).sum().backward()
    assert all(float(getattr(ours, n).adapter_D.grad.norm()) > 0 for n in NAMES)


@pytest.mark.parametrize("over", [{}, {"mode": "bat"}, {"mode": "mini", "mini_r": 4}])
def test_peft_computes_the_same_function(over):
    base = Toy(d_out=16).double()
    ours, cfg = _attach(Toy(d_out=16).double(), **over)
    ours.load_state_dict(base.state_dict(), strict=False)
    _perturb(ours)
    states = {n: {"D": getattr(ours, n).adapter_D.detach().clone()} for n in NAMES}
    pm = bridge.build_peft_model(base, "miss", {**cfg.to_dict(), "dtype": None}, NAMES, states)
    x = torch.randn(4, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(pm(x), ours(x), atol=1e-12)


def test_peft_round_trip(tmp_path):
    ours, _ = _attach(Toy(d_out=16).double(), mode="bat")
    _perturb(ours)
    variants.save_peft(ours, tmp_path)
    back = variants.load_peft(Toy(d_out=16).double(), tmp_path)
    assert variants.state_of(back).cfg.mode == "bat"
    for n in NAMES:
        assert torch.equal(getattr(back, n).adapter_D, getattr(ours, n).adapter_D)


@pytest.mark.parametrize("over,field", [({"r": 17}, "r"), ({"mode": "bat", "r": 5}, "r"),
                                        ({"mode": "mini", "mini_r": 3}, "mini_r"), ({"mini_r": 0, "mode": "mini"}, "mini_r"),
                                        ({"mini_r": 4}, "mini_r"), ({"mode": "gaussian"}, "mode"),
                                        ({"alpha": 2.0}, "alpha")])
def test_refusals_name_the_field(over, field):
    with pytest.raises((ValueError, TypeError), match=field):
        _attach(Toy(d_out=20).double(), **over)
