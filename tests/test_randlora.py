"""RandLoRA (arXiv 2502.00987): our variant, the paper formula, the peft bridge and the init statement."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import variants
from references import paper
from variants.randlora import _ScaledA, draw_bases, num_bases

ref = paper.get("randlora")
NAMES = ["up", "down"]


class Toy(nn.Module):
    """Two layers of different sizes (16→40→12): the first d_in < d_out (ΔW = B A), the second d_in > d_out (the
    product built on the smaller side and transposed); one pair of bases serves both."""

    def __init__(self, conv1d: bool = False):
        super().__init__()
        if conv1d:
            from transformers.pytorch_utils import Conv1D
            self.up, self.down = Conv1D(40, 16), Conv1D(12, 40)  # Conv1D(nf = d_out, nx = d_in)
            for m in (self.up, self.down):
                nn.init.normal_(m.weight, std=0.2)
                nn.init.normal_(m.bias, std=0.1)
        else:
            self.up, self.down = nn.Linear(16, 40), nn.Linear(40, 12)

    def forward(self, x):
        return self.down(self.up(x))


def _w(mod):
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


def _attach(model, **kw):
    cfg = variants.config("randlora", **{"r": 6, "alpha": 12.0, "target_names": (r"^(up|down)$",), **kw})
    return variants.attach(model, cfg), cfg


def _perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in variants.state_of(model).targets.values():
            for t in (mod.adapter_lambda, mod.adapter_gamma):
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) * 0.5)


def _state(mod):
    return {k: getattr(mod, "adapter_" + k).detach() for k in ("A", "B", "lambda", "gamma")}


@pytest.mark.parametrize("conv1d", [False, True])
def test_forward_equals_paper_formula_float64(conv1d):
    torch.manual_seed(0)
    model = Toy(conv1d).double()
    _attach(model, dtype="float64")
    _perturb(model)
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        h = model.up(x)
        y = model.down(h)
    cfg = {"r": 6, "alpha": 12.0}
    for n, inp, out in (("up", x, h), ("down", h, y)):
        mod = getattr(model, n)
        want = ref.forward(inp, _w(mod).detach(), mod.bias.detach(), _state(mod), cfg)
        assert float((out - want).abs().max() / want.abs().max()) < 1e-12, n
        assert float((out - inp @ _w(mod).detach().t() - mod.bias).abs().max()) > 1e-2, "state must move the layer"


def test_gradients_equal_plain_autograd_of_the_paper_formula():
    """Our custom backward (_ScaledA keeps only A, λ, γ) gives the gradients autograd gives the float64 formula,
    on both orientations."""
    torch.manual_seed(1)
    model = Toy().double()
    _attach(model, dtype="float64")
    _perturb(model, seed=1)
    cfg = {"r": 6, "alpha": 12.0}
    for n, d_in in (("up", 16), ("down", 40)):
        mod = getattr(model, n)
        x, t = torch.randn(7, d_in, dtype=torch.float64), None
        y = mod(x)
        t = torch.randn_like(y)
        g_ours = torch.autograd.grad((y * t).sum(), [mod.adapter_lambda, mod.adapter_gamma])
        st = {k: v.clone().requires_grad_(k in ("lambda", "gamma")) for k, v in _state(mod).items()}
        yr = ref.forward(x, _w(mod).detach(), mod.bias.detach(), st, cfg)
        g_ref = torch.autograd.grad((yr * t).sum(), [st["lambda"], st["gamma"]])
        for a, b in zip(g_ours, g_ref):
            assert float((a - b).abs().max() / b.abs().max()) < 1e-12, n


def test_scaled_a_backward_matches_autograd():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 11, generator=g, dtype=torch.float64)
    lam = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    gam = torch.randn(3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda l, m: _ScaledA.apply(a, l, m, 0.7), (lam, gam))


def test_pairing_of_bases_matters():
    """The canonical pairing (B_j = B_flat[:, j::n]) is not the basis-major one: a state read the other way gives
    another ΔW (so a reshape in the wrong order cannot pass the paper check)."""
    g = torch.Generator().manual_seed(4)
    r, m, M = 4, 12, 16
    n = num_bases(m, r)
    st = {"A": torch.randn(r, 1, m, generator=g, dtype=torch.float64),
          "B": torch.randn(M, n, r, generator=g, dtype=torch.float64),
          "lambda": torch.randn(r, n, generator=g, dtype=torch.float64),
          "gamma": torch.randn(n, m, generator=g, dtype=torch.float64)}
    W = torch.zeros(M, m, dtype=torch.float64)
    d = ref.delta(W, st, {"r": r, "alpha": float(r)})
    b_flat = st["B"].reshape(M, n * r)
    rank_major = (st["lambda"][:, :, None] * st["A"] * st["gamma"][None]).reshape(r * n, m)
    basis_major = (st["lambda"].t()[:, :, None] * st["A"][:, 0][None] * st["gamma"][:, None, :]).reshape(n * r, m)
    assert torch.allclose(d, b_flat @ rank_major, rtol=1e-12, atol=1e-12)
    assert float((d - b_flat @ basis_major).abs().max()) > 1e-1


def test_init_shared_bases_zero_lambda_identity():
    torch.manual_seed(0)
    base = Toy()
    model = copy.deepcopy(base)
    _attach(model)
    st = variants.state_of(model)
    up, down = st.targets["up"], st.targets["down"]
    assert up.adapter_A is down.adapter_A and up.adapter_B is down.adapter_B  # one pair, the same tensors
    assert tuple(up.adapter_A.shape) == (6, 1, 40) and tuple(up.adapter_B.shape) == (40, 7, 6)
    assert tuple(up.adapter_lambda.shape) == (6, 3) and tuple(up.adapter_gamma.shape) == (3, 16)
    assert tuple(down.adapter_lambda.shape) == (6, 2) and tuple(down.adapter_gamma.shape) == (2, 12)
    for mod in (up, down):
        assert not mod.adapter_A.requires_grad and not mod.adapter_B.requires_grad
        assert float(mod.adapter_lambda.detach().abs().max()) == 0.0
        assert torch.equal(mod.adapter_gamma, torch.full_like(mod.adapter_gamma, 1.0 / mod.adapter_gamma.shape[1]))
        claims = ref.init_claims(_w(mod).detach().double(), None, _state(mod), {"r": 6, "alpha": 12.0})
        for c in claims:
            assert (c.value == 0) if c.kind == "exact" else (c.value >= c.bound), c
    x = torch.randn(3, 16)
    assert torch.equal(model(x), base(x))
    for t in (up.adapter_A, up.adapter_B):
        assert abs(float(t.std()) - 1.0) < 1e-5  # each divided by its own std


@pytest.mark.parametrize("kw,p_zero", [({"sparse": True}, 2 / 3), ({"very_sparse": True}, None)])
def test_sparse_bases_are_ternary(kw, p_zero):
    model = Toy()
    _attach(model, **kw)
    mod = variants.state_of(model).targets["up"]
    m_star = mod.adapter_A.shape[2]
    p_zero = 1 - 1 / math.sqrt(m_star) if p_zero is None else p_zero
    for t in (mod.adapter_A, mod.adapter_B):
        vals = torch.unique(t)
        assert len(vals) == 3 and float(vals[1]) == 0.0 and float(vals[0]) == -float(vals[2])
    claims = {c.metric: c for c in ref.init_claims(_w(mod).detach().double(), None, _state(mod), {"r": 6, **kw})}
    assert claims["B_ternary_spread"].value == 0.0 and claims["B_zero_share_margin"].value >= 0
    share = float((mod.adapter_B == 0).double().mean())
    assert abs(share - p_zero) < 0.1


def test_init_claims_refuse_a_nonzero_delta_and_both_zero():
    torch.manual_seed(0)
    model = Toy()
    _attach(model)
    mod = variants.state_of(model).targets["up"]
    st = _state(mod)
    W = _w(mod).detach().double()
    bad = ref.init_claims(W, None, {**st, "lambda": st["lambda"] + 0.1}, {"r": 6})
    assert next(c for c in bad if c.metric == "lambda_max_abs").value > 0
    dead = ref.init_claims(W, None, {**st, "gamma": torch.zeros_like(st["gamma"])}, {"r": 6})
    c = next(c for c in dead if c.metric == "gamma_all_nonzero")
    assert c.value < c.bound
    # the authors' side (γ = 0, λ ≠ 0) conforms under its option
    other = ref.init_claims(W, None, {**st, "gamma": torch.zeros_like(st["gamma"]),
                                      "lambda": torch.full_like(st["lambda"], 0.25)}, {"r": 6, "zero_side": "gamma"})
    assert all((c.value == 0) if c.kind == "exact" else (c.value >= c.bound) for c in other)


@pytest.mark.parametrize("conv1d", [False, True])
def test_peft_forward_and_gradients_equal_ours(conv1d):
    """peft's layer with our state: same outputs, and its UniqueBaseGrad backward gives our gradients."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = Toy(conv1d)
    ours = copy.deepcopy(base)
    _attach(ours)
    _perturb(ours)
    pm = peft.get_peft_model(copy.deepcopy(base), peft.RandLoraConfig(
        r=6, randlora_alpha=12, target_modules=NAMES, fan_in_fan_out=conv1d))
    st = variants.state_of(ours)
    layers = {n.split(".")[-1]: m for n, m in pm.named_modules() if isinstance(m, peft.tuners.randlora.layer.Linear)}
    with torch.no_grad():
        for n, m in layers.items():
            o = st.targets[n]
            m.randlora_A["default"].copy_(o.adapter_A)
            m.randlora_B["default"].copy_(o.adapter_B)
            m.randlora_lambda["default"].copy_(o.adapter_lambda)
            m.randlora_gamma["default"].copy_(o.adapter_gamma)
    x = torch.randn(4, 16)
    y_o, y_p = ours(x), pm(x)
    assert float((y_o - y_p).abs().max() / y_o.abs().max()) < 1e-6
    t = torch.randn_like(y_o)
    (y_o * t).sum().backward()
    (y_p * t).sum().backward()
    for n, m in layers.items():
        o = st.targets[n]
        for mine, theirs in ((o.adapter_lambda, m.randlora_lambda["default"]),
                             (o.adapter_gamma, m.randlora_gamma["default"])):
            assert float((mine.grad - theirs.grad).abs().max() / theirs.grad.abs().max()) < 1e-5, n


def test_peft_round_trip(tmp_path):
    pytest.importorskip("peft")
    torch.manual_seed(0)
    base = Toy()
    ours = copy.deepcopy(base)
    _attach(ours)
    _perturb(ours)
    x = torch.randn(3, 16)
    want = ours(x)
    variants.save_peft(ours, tmp_path)
    from peft import PeftModel
    pm = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert float((pm(x) - want).abs().max() / want.abs().max()) < 1e-6
    back = variants.load_peft(copy.deepcopy(base), tmp_path)
    assert torch.equal(back(x), want)
    st = variants.state_of(back)
    assert st.targets["up"].adapter_A is st.targets["down"].adapter_A  # shared again after load


@pytest.mark.parametrize("kw,field", [({"sparse": True, "very_sparse": True}, "very_sparse"),
                                      ({"alpha": 0.0}, "alpha"), ({"alpha": float("nan")}, "alpha")])
def test_config_refusals(kw, field):
    with pytest.raises(ValueError, match=field):
        variants.config("randlora", **kw)


def test_draw_is_seeded_and_unit_std():
    a1, b1 = draw_bases(4, 10, 20, 7, None)
    a2, b2 = draw_bases(4, 10, 20, 7, None)
    a3, _ = draw_bases(4, 10, 20, 8, None)
    assert torch.equal(a1, a2) and torch.equal(b1, b2) and not torch.equal(a1, a3)
    assert tuple(a1.shape) == (4, 1, 10) and tuple(b1.shape) == (20, 3, 4)
    assert abs(float(b1.std()) - 1) < 1e-6


def test_peft_file_with_differing_per_layer_bases_is_refused(tmp_path):
    """peft writes the bases under base_model. and once more per layer; a file whose copies differ is refused."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    base = Toy()
    ours = copy.deepcopy(base)
    _attach(ours)
    variants.save_peft(ours, tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    sd = load_file(path)
    assert torch.equal(sd["base_model.model.up.randlora_A"], sd["base_model.randlora_A"])
    sd["base_model.model.up.randlora_A"] = sd["base_model.model.up.randlora_A"] + 1
    save_file(sd, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="differs from the shared"):
        variants.load_peft(copy.deepcopy(base), tmp_path)
