"""OFT: our hook vs the paper formula, the peft bridge round trip, peft's two Cayley branches, the init
statement, and config refusals (float64 toy layers, a few seconds)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import variants
from references import peft_bridge as bridge
from references.paper import oft as paper

D_IN, D_OUT, B = 16, 12, 4
# float64 throughout: our hook and the formula differ only in the order of a few b-term sums and an
# LU solve of I − Q (normal, cond ≤ √2 for ‖Q‖ < 1), so they agree to ~10 u64 ≈ 2e-15; 1e-12 leaves room
EXACT = 1e-12
CONFIGS = [{"use_cayley_neumann": False}, {"use_cayley_neumann": True, "num_neumann_terms": 5},
           {"use_cayley_neumann": True, "num_neumann_terms": 4}]


class Toy(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.lin = layer

    def forward(self, x):
        return self.lin(x)


def _toy(kind: str) -> Toy:
    torch.manual_seed(0)
    layer = nn.Linear(D_IN, D_OUT) if kind == "linear" else Conv1D(D_OUT, D_IN)
    with torch.no_grad():
        layer.bias.uniform_(-0.5, 0.5)
    return Toy(layer).double()


def _w(layer: nn.Module) -> torch.Tensor:
    """Canonical (d_out, d_in) weight (Conv1D stores Wᵀ)."""
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def _q(std: float = 0.1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D_IN // B, B * (B - 1) // 2, generator=g, dtype=torch.float64) * std


def _ours(kind: str, q: torch.Tensor | None, **fields) -> Toy:
    model = _toy(kind)
    variants.attach(model, variants.config("oft", block_size=B, dtype="float64", target_names=("lin",), **fields))
    if q is not None:
        with torch.no_grad():
            model.lin.adapter_Q.copy_(q)
    return model


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("fields", CONFIGS, ids=["exact", "neumann5", "neumann4"])
def test_forward_equals_the_paper_formula(kind, fields):
    q = _q()
    model = _ours(kind, q, **fields)
    x = torch.randn(3, 5, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cfg = {"block_size": B, "num_neumann_terms": 5, **fields}
    want = paper.forward(x, _w(model.lin).detach(), model.lin.bias.detach(), {"Q": q}, cfg)
    got = model(x)
    assert (got - want).abs().max() < EXACT * want.abs().max()
    # the orientation matters: the transposed rotation (R(−Q) = Rᵀ) is far off at this Q
    wrong = paper.forward(x, _w(model.lin).detach(), model.lin.bias.detach(), {"Q": -q}, cfg)
    assert (got - wrong).abs().max() > 0.05 * want.abs().max()
    # W_eff = W Rᵀ, bias unchanged
    w_eff, b_eff = paper.merged(_w(model.lin).detach(), model.lin.bias.detach(), {"Q": q}, cfg)
    assert torch.equal(b_eff, model.lin.bias.detach())
    assert torch.allclose(w_eff, _w(model.lin).detach() @ paper.rotation({"Q": q}, cfg).T, rtol=0, atol=1e-14)


def test_layout_matches_our_tensors():
    model = _ours("linear", None)
    assert tuple(model.lin.adapter_Q.shape) == paper.layout(D_IN, D_OUT, {"block_size": B})["Q"] == (4, 6)


def test_exact_rotation_is_orthogonal_and_neumann_has_the_stated_spectrum():
    q = _q(0.1)
    exact = paper.rotation({"Q": q}, {"block_size": B})
    assert (exact.T @ exact - torch.eye(D_IN, dtype=torch.float64)).abs().max() < 1e-14  # ~b u64
    for t, contracts in ((5, True), (4, False), (6, False)):
        cfg = {"block_size": B, "use_cayley_neumann": True, "num_neumann_terms": t}
        r = paper.rotation({"Q": q}, cfg)
        sv = torch.linalg.svdvals(r).sort().values
        assert (sv - paper.stated_singular_values(q, cfg)).abs().max() < 1e-13
        assert (float(sv.max()) <= 1 + 1e-14) == contracts  # t = 5: 1 − θ⁴; t = 4: √(1+θ⁶); t = 6: √(1+θ¹⁰)
        # it approximates the exact Cayley map, not its transpose
        assert (r - exact).abs().max() < 0.1 * (r - exact.T).abs().max()


def test_peft_round_trip_and_its_two_cayley_branches():
    base = _toy("linear")
    q = _q()
    x = torch.randn(4, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    w, b = base.lin.weight.detach(), base.lin.bias.detach()
    for neumann in (True, False):
        cfg = {"block_size": B, "use_cayley_neumann": neumann, "num_neumann_terms": 5, "dtype": "float32"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = bridge.build_peft_model(base, "oft", cfg, ["lin"], {"lin": {"Q": q}})
        assert torch.equal(bridge.peft_state(pm, "oft", ["lin"])["lin"]["Q"], q)
        with torch.no_grad():
            y = pm(x)
        same, flipped = paper.forward(x, w, b, {"Q": q}, cfg), paper.forward(x, w, b, {"Q": -q}, cfg)
        scale = same.abs().max()
        if neumann:  # peft's Neumann series follows the paper's sign
            assert (y - same).abs().max() < EXACT * scale
            assert (y - flipped).abs().max() > 0.05 * scale
        else:  # peft's exact branch is (I − Q)(I + Q)⁻¹ = R(−Q): the declared departure
            assert (y - flipped).abs().max() < EXACT * scale
            assert (y - same).abs().max() > 0.05 * scale


def test_peft_silently_changes_a_block_size_that_does_not_divide():
    from peft import OFTConfig, get_peft_model
    model = Toy(nn.Linear(48, 8))
    with pytest.warns(UserWarning, match="oft_block_size"):
        pm = get_peft_model(model, OFTConfig(r=0, oft_block_size=32, target_modules=["lin"]))
    assert tuple(bridge.peft_layer(pm, "lin").oft_R["default"].weight.shape) == (2, 24 * 23 // 2)
    with pytest.raises(ValueError, match="block_size"):  # ours refuses
        variants.attach(Toy(nn.Linear(48, 8)), variants.config("oft", block_size=32, target_names=("lin",)))


def test_init_claims_hold_for_our_init_and_fail_for_a_wrong_one():
    model = _ours("linear", None)
    state = {"Q": model.lin.adapter_Q.detach()}
    w, b = model.lin.weight.detach(), model.lin.bias.detach()
    (claim,) = paper.init_claims(w, b, state, {"block_size": B})
    assert claim.kind == "exact" and claim.value == 0.0
    x = torch.randn(3, D_IN, dtype=torch.float64)
    assert torch.equal(model(x), _toy("linear")(x))  # R = I exactly
    (bad,) = paper.init_claims(w, b, {"Q": _q(0.01)}, {"block_size": B})
    assert bad.value > 0


@pytest.mark.parametrize("fields, field", [({"block_size": 1}, "block_size"), ({"block_size": 0}, "block_size"),
                                           ({"num_neumann_terms": 1}, "num_neumann_terms")])
def test_bad_configs_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=field):
        variants.config("oft", **fields)


def test_a_block_size_that_does_not_divide_d_in_is_refused_at_attach():
    with pytest.raises(ValueError, match="block_size"):
        variants.attach(_toy("linear"), variants.config("oft", block_size=5, target_names=("lin",)))
    with pytest.raises(TypeError, match="use_cayley_neumann"):
        variants.config("oft", use_cayley_neumann="yes")
