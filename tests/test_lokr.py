"""LoKr (LyCORIS, arXiv 2309.14859): our variant, the paper formula, the peft bridge and the init statement.

Toy layers in float64 so that equalities are judged at float64 round-off (tolerances say why).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import variants
from references import peft_bridge
from references.paper import lokr as ref

# 48 = 6·8 inputs, 80 = 8·10 outputs: W₁ (8, 6), W₂ (10, 8), non-square factors (a swapped kron shows)
D_IN, D_OUT = 48, 80
# float64 round-off on sums of a few hundred O(1) terms: far below any O(1) bug
TOL64 = 1e-12
NAMES = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")
# r = 2 < max(out_k, in_n)/2 = 5: W₂ low rank; r = 8: both full; decompose_both with r = 2 < 4: W₁ too
CONFIGS = {"lowrank": {"r": 2, "alpha": 4.0}, "full": {"r": 8, "alpha": 16.0},
           "both": {"r": 2, "alpha": 4.0, "decompose_both": True},
           "factor4": {"r": 2, "alpha": 3.0, "decompose_factor": 4}}


class Toy(nn.Module):
    """One adapted projection: nn.Linear, or transformers' Conv1D (weight stored (d_in, d_out))."""

    def __init__(self, conv1d: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = Conv1D(D_OUT, D_IN) if conv1d else nn.Linear(D_IN, D_OUT)
        with torch.no_grad():  # Conv1D draws N(0, 0.02²) weights and a zero bias: make both O(1)
            self.proj.weight.normal_()
            self.proj.bias.normal_()
        self.double()

    def forward(self, x):
        return self.proj(x)


def canonical(layer: nn.Module) -> torch.Tensor:
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def attach(model, **fields):
    cfg = variants.config("lokr", **{"dtype": "float64", "target_names": ("proj",), **fields})
    return variants.attach(model, cfg), cfg


def state_of(layer) -> dict[str, torch.Tensor]:
    return {n: getattr(layer, "adapter_" + n).detach() for n in NAMES if hasattr(layer, "adapter_" + n)}


def x_in(n=7):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def random_state(cfg: dict, seed: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=torch.float64) * 0.5 for k, s in ref.layout(D_IN, D_OUT, cfg).items()}


def test_factorization_and_branches_match_peft():
    from peft.tuners.lokr.layer import factorization as peft_factorization
    from variants.lokr import factorization as ours
    for d in range(1, 300):
        for f in (-1, 1, 2, 3, 4, 7, 16):
            assert ours(d, f) == ref.factorization(d, f) == peft_factorization(d, f), (d, f)
    assert ref.layout(D_IN, D_OUT, {"r": 2}) == {"w1": (8, 6), "w2_a": (10, 2), "w2_b": (2, 8)}
    assert ref.layout(D_IN, D_OUT, {"r": 5}) == {"w1": (8, 6), "w2": (10, 8)}  # 5 ≥ max(10, 8)/2
    assert ref.layout(D_IN, D_OUT, {"r": 2, "decompose_both": True}) == {
        "w1_a": (8, 2), "w1_b": (2, 6), "w2_a": (10, 2), "w2_b": (2, 8)}


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("which", list(CONFIGS))
def test_forward_equals_paper_formula_and_identity_at_init(conv1d, which):
    model = Toy(conv1d)
    x = x_in()
    with torch.no_grad():
        y0 = model(x)
    attach(model, **CONFIGS[which])
    layer = model.proj
    cfg = variants.state_of(model).cfg.to_dict()
    assert {k: tuple(v.shape) for k, v in state_of(layer).items()} == ref.layout(D_IN, D_OUT, cfg)
    with torch.no_grad():
        assert torch.equal(model(x), y0)  # one factor is exactly 0: ΔW = 0, y + 0 = y bit for bit
        for n in state_of(layer):
            getattr(layer, "adapter_" + n).add_(0.3 * torch.randn_like(getattr(layer, "adapter_" + n)))
        y = model(x)
    y_ref = ref.forward(x, canonical(layer), layer.bias, state_of(layer), cfg)
    assert (y - y_ref).abs().max() < TOL64 * y_ref.abs().max()
    assert (y - y0).abs().max() > 1e-3  # the perturbation moved the output: the comparison is not vacuous


def test_scale_is_one_with_two_full_factors_and_kron_order_matters():
    st_full = random_state(CONFIGS["full"])
    W = torch.randn(D_OUT, D_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w1, w2 = st_full["w1"], st_full["w2"]
    # γ = 1 for two full factors whatever alpha (LyCORIS), alpha/r = 2 with a low-rank W₂
    assert torch.allclose(ref.merged(W, None, st_full, CONFIGS["full"])[0] - W, torch.kron(w1, w2), rtol=0, atol=1e-14)
    st_low = random_state(CONFIGS["lowrank"])
    d = ref.merged(W, None, st_low, CONFIGS["lowrank"])[0] - W
    assert torch.allclose(d, 2.0 * torch.kron(st_low["w1"], st_low["w2_a"] @ st_low["w2_b"]), rtol=0, atol=1e-13)
    # the documented index convention, and that the swapped order is a different matrix
    k = torch.kron(w1, w2)
    assert k[3 * 10 + 4, 2 * 8 + 5] == w1[3, 2] * w2[4, 5]
    assert (torch.kron(w2, w1) - k).abs().max() > 0.1
    # the Kronecker structure residual sees a single product as rank one, a sum of two as not
    g = ref.factor_shapes(D_IN, D_OUT, CONFIGS["full"])
    assert ref.kron_residual(k, g) < 1e-12 * float(k.norm())
    assert ref.kron_residual(k + torch.kron(w1.flip(0), w2.flip(1)), g) > 0.1 * float(k.norm())


@pytest.mark.parametrize("which", list(CONFIGS))
def test_bridge_round_trip_and_peft_equals_paper_formula(which):
    cfg = {**CONFIGS[which], "dtype": "float64"}
    model = Toy()
    state = random_state(cfg)
    pm = peft_bridge.build_peft_model(model, "lokr", cfg, ["proj"], {"proj": state})
    back = peft_bridge.peft_state(pm, "lokr", ["proj"])["proj"]
    assert sorted(back) == sorted(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k
    x = x_in()
    with torch.no_grad():
        y_peft = pm(x)
    y_ref = ref.forward(x, model.proj.weight, model.proj.bias, state, cfg)
    # the full-full case holds only because the bridge sets alpha = r there (peft's alpha/r would give 2·ΔW)
    assert (y_peft - y_ref).abs().max() < TOL64 * y_ref.abs().max()
    assert peft_bridge.peft_trainable_names(pm) == [f"base_model.model.proj.lokr_{k}.default" for k in
                                                    sorted(state, key=NAMES.index)]


def test_peft_own_scale_with_two_full_factors_is_alpha_over_r():
    """The departure the card declares: peft as configured by a user (alpha = 16, r = 8) doubles ΔW."""
    from peft import LoKrConfig, get_peft_model
    model = Toy()
    W = model.proj.weight.detach().clone()
    pm = get_peft_model(model, LoKrConfig(r=8, alpha=16, init_weights=False, target_modules=["proj"]))
    layer = pm.base_model.model.proj
    st = {"w1": layer.lokr_w1["default"].detach(), "w2": layer.lokr_w2["default"].detach()}
    got = layer.get_delta_weight("default").detach()
    assert torch.allclose(got, 2.0 * (ref.merged(W, None, st, CONFIGS["full"])[0] - W), rtol=0, atol=1e-12)


@pytest.mark.parametrize("style", ["lycoris", "peft"])
@pytest.mark.parametrize("which", ["lowrank", "full", "both"])
def test_init_claims_hold_for_our_init_and_fail_for_a_wrong_one(style, which):
    from audit.checks.init import ks_critical, ks_uniform
    fields = {**CONFIGS[which], "init_style": style}
    model = Toy()
    W, b = model.proj.weight.detach().clone(), model.proj.bias.detach().clone()
    attach(model, **fields, seed=3)
    cfg = variants.state_of(model).cfg.to_dict()
    st = state_of(model.proj)

    def judge(state):
        bad = []
        for c in ref.init_claims(W, b, state, cfg):
            if c.kind == "exact" and c.value != 0:
                bad.append(c.metric)
            if c.kind == "distribution" and ks_uniform(c.pit) > ks_critical(c.pit.numel()):
                bad.append(c.metric)
        return bad

    assert judge(st) == []
    zero = ref.zero_factor(cfg, st)
    assert float(st[zero].abs().max()) == 0.0
    # the other style's init (the wrong factor zeroed): the exact claim fails
    other = {k: (torch.zeros_like(v) if k == ref.zero_factor({**cfg, "init_style": {"lycoris": "peft", "peft": "lycoris"}[style]}, st)
                 else torch.rand(v.shape, dtype=v.dtype, generator=torch.Generator().manual_seed(9)) * 2 - 1)
             for k, v in st.items()}
    assert "zero_factor_max_abs" in judge(other)
    # one-signed draws U(0, 1/√fan_in) (rand instead of 2·rand − 1): a KS failure where a tensor has enough
    # draws for one layer to tell (≥ 48: KS 0.5 against a critical 0.39 at α = 1e-6; W₂ₐ, W₂ᵦ, W₁ₐ, W₁ᵦ have 12-20;
    # the audit pools every layer's draws): lowrank-lycoris, full-* test it
    if any(v.numel() >= 48 for k, v in st.items() if k != zero):
        g = torch.Generator().manual_seed(4)
        half = {k: (v if k == zero else torch.rand(v.shape, generator=g, dtype=v.dtype) / v.shape[1] ** 0.5)
                for k, v in st.items()}
        assert any(m.endswith("_draw") for m in judge(half))


@pytest.mark.parametrize("style", ["lycoris", "peft"])
def test_zero_gradients_at_step_zero_are_the_claimed_ones(style):
    from audit.cards import get
    model = Toy()
    attach(model, **CONFIGS["lowrank"], init_style=style)
    cfg = variants.state_of(model).cfg.to_dict()
    loss = (model(x_in()) ** 2).sum() + model(x_in()).sum()
    loss.backward()
    dead = {n for n, t in state_of(model.proj).items() if float(getattr(model.proj, "adapter_" + n).grad.abs().max()) == 0}
    assert dead == {"lycoris": {"w1", "w2_a"}, "peft": {"w2_a", "w2_b"}}[style]
    assert dead == set(get("lokr").zero_grads_at(cfg))


@pytest.mark.parametrize("fields, field", [({"decompose_factor": 0}, "decompose_factor"),
                                           ({"decompose_factor": -2}, "decompose_factor"),
                                           ({"init_style": "kaiming"}, "init_style"),
                                           ({"decompose_both": "yes"}, "decompose_both"),
                                           ({"r": 0}, "r")])
def test_bad_configs_are_refused_naming_the_field(fields, field):
    with pytest.raises((ValueError, TypeError)) as e:
        variants.config("lokr", **fields)
    assert f"LokrConfig.{field}" in str(e.value)


def test_trainable_count_matches_the_card():
    from audit.cards import get
    card = get("lokr")
    for fields in CONFIGS.values():
        model = Toy()
        attach(model, **fields)
        have = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert have == card.trainable_per_layer(D_IN, D_OUT, variants.state_of(model).cfg.to_dict())
