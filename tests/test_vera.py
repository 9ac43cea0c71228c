"""VeRA (arXiv 2310.11454): our variant, the paper formula, the peft bridge and the init statement."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import variants
from references import paper
from references import peft_bridge as bridge
from variants.vera import Vera, draw_projections

ref = paper.get("vera")


class Toy(nn.Module):
    """Two layers of different sizes (16→24→8), so the shared pair is sliced differently per layer."""

    def __init__(self, conv1d: bool = False):
        super().__init__()
        if conv1d:
            from transformers.pytorch_utils import Conv1D
            self.up, self.down = Conv1D(24, 16), Conv1D(8, 24)  # Conv1D(nf = d_out, nx = d_in)
            for m in (self.up, self.down):
                nn.init.normal_(m.weight, std=0.2)
                nn.init.normal_(m.bias, std=0.1)
        else:
            self.up, self.down = nn.Linear(16, 24), nn.Linear(24, 8)

    def forward(self, x):
        return self.down(self.up(x))


NAMES = ["up", "down"]


def _canonical_w(mod):
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


def _random_state(model, r=4, seed=0):
    """A non-identity canonical state: the shared pair from the key, random λ_b, λ_d."""
    g = torch.Generator().manual_seed(seed)
    A, B = draw_projections(r, 24, 24, seed)
    out = {}
    for n in NAMES:
        d_out = _canonical_w(getattr(model, n)).shape[0]
        out[n] = {"A": A, "B": B, "lambda_b": torch.randn(d_out, generator=g) * 0.5,
                  "lambda_d": torch.randn(r, generator=g) * 0.5}
    return out


def _attach(model, **kw):
    cfg = variants.config("vera", **{"r": 4, "target_names": (r"^(up|down)$",), "dtype": "float64", **kw})
    return variants.attach(model, cfg), cfg


def _set(model, state):
    st = variants.state_of(model)
    with torch.no_grad():
        for n, mod in st.targets.items():
            for k, v in state[n].items():
                getattr(mod, "adapter_" + k).copy_(v)


@pytest.mark.parametrize("conv1d", [False, True])
def test_forward_equals_paper_formula_float64(conv1d):
    torch.manual_seed(0)
    model = Toy(conv1d).double()
    _attach(model)
    state = _random_state(model)
    _set(model, state)
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        h = model.up(x)
        y = model.down(h)
    for n, inp, out in (("up", x, h), ("down", h, y)):
        mod = getattr(model, n)
        want = ref.forward(inp, _canonical_w(mod).detach(), mod.bias.detach(), state[n], {"r": 4})
        # float64 both sides, same products in another association: a few ulps (unit round-off 1.1e-16)
        assert torch.allclose(out, want, rtol=1e-12, atol=1e-12), n
        assert float((want - inp @ _canonical_w(mod).detach().t() - mod.bias.detach()).abs().max()) > 1e-3


def test_the_pair_is_shared_frozen_and_peft_s_draw():
    model = Toy()
    _attach(model, dtype="float32", seed=5)
    up, down = model.up, model.down
    assert up.adapter_A is down.adapter_A and up.adapter_B is down.adapter_B
    assert tuple(up.adapter_A.shape) == (4, 24) and tuple(up.adapter_B.shape) == (24, 4)
    assert not up.adapter_A.requires_grad and "adapter_A" in dict(up.named_buffers())
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["down.adapter_lambda_b", "down.adapter_lambda_d",
                         "up.adapter_lambda_b", "up.adapter_lambda_d"]
    # the same key gives peft's own pair, bit for bit (peft/tuners/vera/model.py _init_vera_A_vera_B)
    from peft import VeraConfig, get_peft_model
    pm = get_peft_model(Toy(), VeraConfig(r=4, projection_prng_key=5, target_modules=["up", "down"]))
    assert torch.equal(pm.base_model.vera_A["default"], up.adapter_A)
    assert torch.equal(pm.base_model.vera_B["default"], up.adapter_B)


def test_save_load_round_trips_the_pair(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    _attach(model, dtype="float32")
    with torch.no_grad():
        model.up.adapter_lambda_b.normal_()
    x = torch.randn(3, 16)
    y = model(x)
    variants.save(model, tmp_path / "v.safetensors")
    fresh = Toy()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "adapter_" not in k})
    variants.load(fresh, tmp_path / "v.safetensors")
    assert torch.equal(fresh(x), y)
    assert torch.equal(fresh.up.adapter_A, model.up.adapter_A) and torch.equal(fresh.down.adapter_B, model.down.adapter_B)


@pytest.mark.parametrize("conv1d", [False, True])
def test_bridge_round_trip_and_peft_equals_formula(conv1d):
    torch.manual_seed(0)
    base = Toy(conv1d).double()
    state = _random_state(base)
    pm = bridge.build_peft_model(base, "vera", {"r": 4, "dtype": None}, NAMES, state)
    back = bridge.peft_state(pm, "vera", NAMES)
    for n in NAMES:
        for k, v in state[n].items():
            assert torch.equal(back[n][k], v.double()), (n, k)
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        y = pm(x)
    h = ref.forward(x, _canonical_w(base.up).detach(), base.up.bias.detach(), state["up"], {"r": 4})
    want = ref.forward(h, _canonical_w(base.down).detach(), base.down.bias.detach(), state["down"], {"r": 4})
    # float64 throughout, two layers: agreement to a few ulps of the outputs' size
    assert torch.allclose(y, want, rtol=1e-12, atol=1e-12)


def test_bridge_refuses_layers_with_different_pairs():
    base = Toy().double()
    state = _random_state(base)
    state["down"] = {**state["down"], "A": state["down"]["A"] + 1}
    with pytest.raises(bridge.BridgeUnsupported, match="shares one A, B pair"):
        bridge.build_peft_model(base, "vera", {"r": 4}, NAMES, state)


def _claims(model, cfg):
    st = variants.state_of(model)
    out = {}
    for n, mod in st.targets.items():
        state = {k: getattr(mod, "adapter_" + k) for k in ("A", "B", "lambda_b", "lambda_d")}
        for c in ref.init_claims(_canonical_w(mod).detach(), mod.bias, state, cfg.to_dict()):
            out.setdefault(c.metric, []).append(c)
    return out


def _holds(c) -> bool:
    return c.value == 0 if c.kind == "exact" else c.value >= c.bound


def test_init_claims_hold_for_our_init():
    model = Toy()
    _, cfg = _attach(model, r=64, dtype="float32", d_initial=0.3)
    claims = _claims(model, cfg)
    assert set(claims) == {"lambda_b_max_abs", "lambda_d_minus_d_initial", "A_kaiming_uniform_ks_margin",
                           "B_kaiming_uniform_ks_margin"}
    assert all(_holds(c) for cs in claims.values() for c in cs)
    with torch.no_grad():  # exactly the base model at init (λ_b = 0)
        x = torch.randn(3, 16)
        base = nn.functional.linear(nn.functional.linear(x, model.up.weight, model.up.bias), model.down.weight,
                                    model.down.bias)
        assert torch.equal(model(x), base)


@pytest.mark.parametrize("wrong,metric", [
    ("lora_bound", "A_kaiming_uniform_ks_margin"),   # kaiming_uniform(a=√5): U(±1/√fan), √6 too narrow
    ("own_fan_in", "A_kaiming_uniform_ks_margin"),   # fan-in of a smaller layer, not of the pair
    ("b_fan_out", "B_kaiming_uniform_ks_margin"),    # B with fan-in D_out instead of r
    ("lambda_b_one", "lambda_b_max_abs"),
    ("lambda_d_default", "lambda_d_minus_d_initial"),
])
def test_init_claims_fail_for_a_wrong_init(wrong, metric):
    model = Toy()
    _, cfg = _attach(model, r=64, dtype="float32", d_initial=0.3)
    mod = model.up
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        A, B = mod.adapter_A, mod.adapter_B
        if wrong == "lora_bound":
            A.uniform_(-1 / math.sqrt(24), 1 / math.sqrt(24), generator=g)
        elif wrong == "own_fan_in":
            A.uniform_(-math.sqrt(6 / 16), math.sqrt(6 / 16), generator=g)
        elif wrong == "b_fan_out":
            B.uniform_(-math.sqrt(6 / 24), math.sqrt(6 / 24), generator=g)
        elif wrong == "lambda_b_one":
            mod.adapter_lambda_b.fill_(1.0)
        else:
            mod.adapter_lambda_d.fill_(0.1)
    claims = _claims(model, cfg)
    assert not all(_holds(c) for c in claims[metric]), metric
    others = [c for m, cs in claims.items() if m != metric for c in cs]
    assert all(_holds(c) for c in others)


@pytest.mark.parametrize("fields,field", [({"d_initial": 0.0}, "d_initial"), ({"d_initial": float("nan")}, "d_initial"),
                                          ({"r": 0}, "r"), ({"d_initial": "0.1"}, "d_initial")])
def test_bad_configs_are_refused_naming_the_field(fields, field):
    with pytest.raises((ValueError, TypeError), match=rf"VeraConfig\.{field}"):
        variants.config("vera", **fields)


def test_lambda_d_is_dead_at_step_0_and_lambda_b_is_not():
    torch.manual_seed(0)
    model = Toy()
    _attach(model, dtype="float32")
    model(torch.randn(4, 16)).pow(2).sum().backward()
    assert torch.count_nonzero(model.up.adapter_lambda_d.grad) == 0
    assert torch.count_nonzero(model.up.adapter_lambda_b.grad) > 0
    assert model.up.adapter_A.grad is None


def test_variant_is_registered():
    assert variants.REGISTRY["vera"] is Vera
    assert "vera" in paper.VARIANTS and "vera" in bridge.PEFT_VARIANTS


def test_the_shared_pair_is_saved_once_and_shared_again_after_load(tmp_path):
    """A checkpoint stores VeRA's frozen pair once (as peft does), not once per layer: at r = 256 on a
    7B model a copy per layer would be gigabytes. Loaded into a bare model, the layers share it again."""
    from safetensors import safe_open

    from audit import models
    m = models.build("qwen2")
    ids = models.example_inputs(m)
    variants.attach(m, variants.config("vera", r=4))
    with torch.no_grad():
        for mod in variants.state_of(m).targets.values():
            mod.adapter_lambda_b.normal_()
    y = models.logits(m, ids).detach()
    path = variants.save(m, tmp_path / "vera.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert sum(k.endswith("adapter_A") for k in keys) == 1 and sum(k.endswith("adapter_B") for k in keys) == 1
    fresh = models.build("qwen2")
    variants.load(fresh, path)
    layers = variants.state_of(fresh).targets.values()
    assert len({id(x.adapter_A) for x in layers}) == 1 and len({id(x.adapter_B) for x in layers}) == 1
    assert torch.equal(models.logits(fresh, ids), y)
