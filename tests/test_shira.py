"""SHiRA (arXiv 2406.13175): our variant, the paper formula, the peft bridge, the mask as state, the init statement."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from references import paper
from references import peft_bridge as bridge
from variants.shira import Shira, random_positions

ref = paper.get("shira")
NAMES = ["up", "down"]


class Toy(nn.Module):
    """Two non-square layers (16→24→8)."""

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


def _w(mod):
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


def _attach(model, **kw):
    cfg = variants.config("shira", **{"r": 2, "target_names": (r"^(up|down)$",), **kw})
    return variants.attach(model, cfg), cfg


def _state(mod):
    return {"indices": mod.adapter_indices, "values": mod.adapter_values}


def _move(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in variants.state_of(model).targets.values():
            mod.adapter_values.copy_(torch.randn(mod.adapter_values.shape, generator=g, dtype=torch.float64) * 0.5)


@pytest.mark.parametrize("conv1d", [False, True])
def test_forward_and_gradients_equal_the_paper_formula_float64(conv1d):
    torch.manual_seed(0)
    model = Toy(conv1d).double()
    _attach(model, dtype="float64")
    _move(model)
    x = torch.randn(5, 16, dtype=torch.float64)
    for n in NAMES:
        mod = getattr(model, n)
        xin = x if n == "up" else model.up(x).detach()
        t = torch.randn(5, _w(mod).shape[0], dtype=torch.float64)
        xin = xin.clone().requires_grad_(True)
        (mod(xin) * t).sum().backward()
        vals = mod.adapter_values.detach().clone().requires_grad_(True)
        x2 = xin.detach().clone().requires_grad_(True)
        want = ref.forward(x2, _w(mod).detach(), mod.bias.detach(), {"indices": mod.adapter_indices, "values": vals},
                           {"r": 2})
        (want * t).sum().backward()
        assert torch.allclose(xin.grad, x2.grad, rtol=1e-12, atol=1e-12), n
        # float64 on both sides, the same sums in another order: a few ulps (u = 1.1e-16)
        assert torch.allclose(mod(xin), want, rtol=1e-12, atol=1e-12), n
        assert torch.allclose(mod.adapter_values.grad, vals.grad, rtol=1e-12, atol=1e-12), n
        assert float((want - xin @ _w(mod).detach().t() - mod.bias.detach()).abs().max()) > 1e-3


def test_bf16_base_is_the_formula_up_to_one_rounding_of_the_output():
    torch.manual_seed(0)
    model = Toy().to(torch.bfloat16)
    _attach(model)  # float32 values over a bf16 base
    _move(model)
    x = torch.randn(7, 16).to(torch.bfloat16)
    y = model.up(x)
    want = ref.forward(x.double(), model.up.weight.detach().double(), model.up.bias.detach().double(),
                       _state(model.up), {"r": 2})
    # the base output is rounded to bf16 (u = 2⁻⁸) and the sparse term added in float32 then rounded again:
    # two roundings of outputs of size ~|y|
    assert float((y.double() - want).abs().max()) <= 2 * 2.0 ** -8 * float(want.abs().max()) + 1e-6


def test_the_mask_is_a_fixed_int64_buffer_of_distinct_positions():
    model = Toy()
    _attach(model, seed=3)
    for n in NAMES:
        mod = getattr(model, n)
        d_out, d_in = _w(mod).shape
        idx = mod.adapter_indices
        assert idx.dtype == torch.int64 and not idx.requires_grad and "adapter_indices" in dict(mod.named_buffers())
        assert tuple(idx.shape) == (2, 2 * (d_in + d_out)) and mod.adapter_values.shape == (2 * (d_in + d_out),)
        flat = idx[0] * d_in + idx[1]
        assert torch.unique(flat).numel() == flat.numel()
        assert int(idx[0].max()) < d_out and int(idx[1].max()) < d_in and int(idx.min()) >= 0
        assert torch.equal(flat, flat.sort().values)  # row-major, as peft's torch.where gives
        assert torch.count_nonzero(mod.adapter_values) == 0
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["down.adapter_values", "up.adapter_values"]
    again = Toy()
    _attach(again, seed=3)
    other = Toy()
    _attach(other, seed=4)
    assert torch.equal(again.up.adapter_indices, model.up.adapter_indices)
    assert not torch.equal(other.up.adapter_indices, model.up.adapter_indices)


def test_identity_at_init_and_every_value_gets_a_gradient():
    torch.manual_seed(0)
    model = Toy()
    x = torch.randn(64, 16)
    base = model(x).detach()
    _attach(model)
    assert torch.equal(model(x), base)  # S = 0 exactly
    model(x).pow(2).sum().backward()
    for n in NAMES:
        # ∂L/∂S_ij = Σ_t g_ti x_tj: a random input leaves none of them zero
        assert torch.count_nonzero(getattr(model, n).adapter_values.grad) == getattr(model, n).adapter_values.numel()


def test_save_load_restores_the_trained_positions_not_a_new_draw(tmp_path):
    torch.manual_seed(0)
    model = Toy()
    _attach(model, seed=5)
    _move(model)
    x = torch.randn(3, 16)
    y = model(x)
    variants.save(model, tmp_path / "s.safetensors")
    fresh = Toy()
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "adapter_" not in k})
    variants.load(fresh, tmp_path / "s.safetensors")
    assert torch.equal(fresh.up.adapter_indices, model.up.adapter_indices)
    assert torch.equal(fresh(x), y)


def test_merge_writes_w_plus_s_and_unmerge_restores():
    torch.manual_seed(0)
    model = Toy()
    _attach(model)
    _move(model)
    w0 = model.up.weight.detach().clone()
    s = ref.sparse_matrix(w0, _state(model.up))
    variants.merge(model)
    assert torch.allclose(model.up.weight.double(), w0.double() + s, atol=1e-6)
    variants.unmerge(model)
    assert torch.equal(model.up.weight, w0)


@pytest.mark.parametrize("conv1d", [False, True])
def test_bridge_round_trip_and_peft_equals_formula(conv1d):
    torch.manual_seed(0)
    base = Toy(conv1d).double()
    g = torch.Generator().manual_seed(1)
    states = {}
    for n in NAMES:
        d_out, d_in = _w(getattr(base, n)).shape
        k = 2 * (d_in + d_out)
        # positions in shuffled order: neither side may assume a sorted mask
        idx = random_positions(d_in, d_out, k, g)[:, torch.randperm(k, generator=g)]
        states[n] = {"indices": idx, "values": torch.randn(k, generator=g, dtype=torch.float64)}
    if conv1d:  # peft's SHiRA takes torch.nn.Linear only
        with pytest.raises(bridge.BridgeUnsupported, match="torch.nn.Linear only"):
            bridge.build_peft_model(base, "shira", {"r": 2, "dtype": None}, NAMES, states)
        return
    pm = bridge.build_peft_model(base, "shira", {"r": 2, "dtype": None}, NAMES, states)
    back = bridge.peft_state(pm, "shira", NAMES)
    for n in NAMES:
        assert torch.equal(back[n]["indices"].long(), states[n]["indices"])
        assert torch.equal(back[n]["values"], states[n]["values"])
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        y = pm(x)
    h = ref.forward(x, base.up.weight.detach(), base.up.bias.detach(), states["up"], {"r": 2})
    want = ref.forward(h, base.down.weight.detach(), base.down.bias.detach(), states["down"], {"r": 2})
    assert torch.allclose(y, want, rtol=1e-12, atol=1e-12)  # float64 throughout: a few ulps


def test_peft_masks_repeat_across_same_shaped_layers_ours_do_not():
    """peft re-seeds a fresh generator per layer (mask_functions.random_mask), so layers of one shape share one
    mask; ours draws every layer's from one running generator. Both are SHiRA-Rand (the paper does not say)."""
    from peft import ShiraConfig, get_peft_model

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 24), nn.Linear(16, 24)

    pm = get_peft_model(Twin(), ShiraConfig(r=2, random_seed=1, target_modules=["a", "b"]))
    m = pm.base_model.model
    assert torch.equal(m.a.shira_indices["default"], m.b.shira_indices["default"])
    ours = Twin()
    variants.attach(ours, variants.config("shira", r=2, target_names=("^a$|^b$",)))
    assert not torch.equal(ours.a.adapter_indices, ours.b.adapter_indices)


def _claims(model, cfg):
    out = {}
    for n, mod in variants.state_of(model).targets.items():
        for c in ref.init_claims(_w(mod).detach(), mod.bias, _state(mod), cfg.to_dict()):
            out.setdefault(c.metric, []).append(c)
    return out


def _holds(c) -> bool:
    return c.value == 0 if c.kind == "exact" else c.value >= c.bound


def test_init_claims_hold_for_our_init_at_every_seed():
    for seed in range(10):
        model = Toy()
        _, cfg = _attach(model, r=3, seed=seed)
        claims = _claims(model, cfg)
        assert set(claims) == {"values_max_abs", "mask_size_minus_K", "mask_positions_outside",
                               "mask_positions_repeated", "mask_uniform_ks_margin"}
        assert all(_holds(c) for cs in claims.values() for c in cs), seed


@pytest.mark.parametrize("wrong,metric", [
    ("values", "values_max_abs"),
    ("repeat", "mask_positions_repeated"),
    ("first_k", "mask_uniform_ks_margin"),   # a structured block (the first K entries), not a random draw
    ("outside", "mask_positions_outside"),
])
def test_init_claims_fail_for_a_wrong_init(wrong, metric):
    model = Toy()
    _, cfg = _attach(model, r=3)
    mod = model.up
    d_out, d_in = _w(mod).shape
    idx = mod.adapter_indices
    k = idx.shape[1]
    with torch.no_grad():
        if wrong == "values":
            mod.adapter_values.fill_(1e-3)
        elif wrong == "repeat":
            idx[:, 1] = idx[:, 0]
        elif wrong == "first_k":
            flat = torch.arange(k)
            idx.copy_(torch.stack((flat // d_in, flat % d_in)))
        else:
            idx[0, 0] = d_out
    claims = _claims(model, cfg)
    assert not all(_holds(c) for c in claims[metric]), metric


@pytest.mark.parametrize("fields,field", [({"mask_type": "struct"}, "mask_type"), ({"r": 0}, "r"),
                                          ({"mask_type": 1}, "mask_type")])
def test_bad_configs_are_refused_naming_the_field(fields, field):
    with pytest.raises((ValueError, TypeError), match=rf"ShiraConfig\.{field}"):
        variants.config("shira", **fields)


def test_a_mask_larger_than_the_weight_is_refused_before_any_change():
    model = Toy()  # down: 24→8 holds 192 entries; r = 7 asks for 7·32 = 224
    with pytest.raises(ValueError, match=r"ShiraConfig\.r: r=7 exceeds 6"):
        _attach(model, r=7)
    assert not hasattr(model, "_adapter_audit_state")


def test_repeated_positions_add_like_the_formula_and_peft():
    """A mask is a set, and the init statement and an invariant flag a repeated position; a state that has one
    (not one our init makes) still computes what the formula and peft's coalesced COO do: the entries add."""
    model = Toy().double()
    _attach(model, dtype="float64")
    _move(model)
    with torch.no_grad():
        model.up.adapter_indices[:, 1] = model.up.adapter_indices[:, 0]
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    model.up(x).pow(2).sum().backward()
    vals = model.up.adapter_values.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    want = ref.forward(x2, model.up.weight.detach(), model.up.bias.detach(),
                       {"indices": model.up.adapter_indices, "values": vals}, {"r": 2})
    want.pow(2).sum().backward()
    assert torch.allclose(model.up(x), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(model.up.adapter_values.grad, vals.grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(x.grad, x2.grad, rtol=1e-12, atol=1e-12)


def test_variant_is_registered():
    assert variants.REGISTRY["shira"] is Shira
    assert "shira" in paper.VARIANTS and "shira" in bridge.PEFT_VARIANTS


def test_alpha_is_refused():
    with pytest.raises(TypeError, match="shira does not use alpha"):
        variants.config("shira", alpha=2.0)
