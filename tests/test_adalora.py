"""AdaLoRA (arXiv 2303.10512): our variant, the paper formula, the peft bridge, the init statement, the
config checks, the orthogonality regulariser and the rank allocator (vs peft's RankAllocator)."""
from __future__ import annotations

import types
from collections import OrderedDict

import pytest
import torch
from torch import nn

import variants
from audit.checks.init import ks_critical, ks_uniform
from references import peft_bridge as bridge
from references.paper import adalora as ref
from variants.adalora import RankAllocator, budget, orthogonality_regularizer, regularized_loss

F64 = torch.float64
D_IN, D_HID, D_OUT = 12, 20, 7


class Toy(nn.Module):
    """Two dense layers (non-square), either nn.Linear or transformers Conv1D; forward returns an object with
    .loss (so peft's AdaLoraModel.forward adds its regulariser) and .logits."""

    def __init__(self, conv1d: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        if conv1d:
            from transformers.pytorch_utils import Conv1D
            self.fc1, self.fc2 = Conv1D(D_HID, D_IN), Conv1D(D_OUT, D_HID)
            with torch.no_grad():
                for m in (self.fc1, self.fc2):
                    m.weight.normal_(0, 0.3)
                    m.bias.normal_(0, 0.1)
        else:
            self.fc1, self.fc2 = nn.Linear(D_IN, D_HID), nn.Linear(D_HID, D_OUT)

    def forward(self, x):
        y = self.fc2(torch.tanh(self.fc1(x)))
        return types.SimpleNamespace(logits=y, loss=(y ** 2).mean())


def _w(mod):
    """Canonical (d_out, d_in) weight of nn.Linear or Conv1D."""
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


def _attach(model, **cfg):
    fields = dict(r=4, alpha=8.0, target_r=2, dtype="float64", target_names=("fc1", "fc2"))
    fields.update(cfg)
    return variants.attach(model, variants.config("adalora", **fields))


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in variants.state_of(model).targets.values():
            for k in ("A", "E", "B"):
                t = getattr(layer, "adapter_" + k)
                t.copy_(torch.randn(t.shape, generator=g, dtype=F64) * (1.0 if k == "E" else 0.3))


def _states(model):
    return {n: {k: v.detach().clone() for k, v in variants.adapter_tensors(m).items()}
            for n, m in variants.state_of(model).targets.items()}


def _paper_model_output(model, x, states, cfg):
    """The toy model's output with each layer replaced by the paper formula (float64)."""
    h = ref.forward(x, _w(model.fc1).detach(), model.fc1.bias.detach(), states["fc1"], cfg)
    return ref.forward(torch.tanh(h), _w(model.fc2).detach(), model.fc2.bias.detach(), states["fc2"], cfg)


# -- forward vs the paper formula -----------------------------------------------------------------------------

@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_forward_equals_paper_formula(conv1d):
    model = Toy(conv1d).double()
    cfg = {"r": 4, "alpha": 8.0}
    _attach(model, **cfg)
    _randomise(model)
    x = torch.randn(3, 5, D_IN, dtype=F64)
    y = model(x).logits
    truth = _paper_model_output(model, x, _states(model), cfg)
    # float64 throughout: only reduction-order rounding (~1e-16 relative) separates them
    assert torch.allclose(y, truth, rtol=1e-12, atol=1e-12)
    # the scale is alpha / r: the adapter's contribution with alpha = 3 is 3/8 of the alpha = 8 one
    base = _paper_model_output(model, x, {n: {**s, "E": torch.zeros_like(s["E"])} for n, s in _states(model).items()}, cfg)
    assert (y - base).abs().max() > 1e-2  # the adapter moves the output (so the check above is not vacuous)


def test_identity_at_init_and_zero_grads():
    model = Toy().double()
    x = torch.randn(4, D_IN, dtype=F64)
    y0 = model(x).logits.detach()
    _attach(model)
    out = model(x)
    assert torch.equal(out.logits, y0)  # λ = 0: exactly the base
    out.loss.backward()
    for layer in variants.state_of(model).targets.values():
        assert torch.count_nonzero(layer.adapter_A.grad) == 0 and torch.count_nonzero(layer.adapter_B.grad) == 0
        assert torch.count_nonzero(layer.adapter_E.grad) > 0


# -- the peft bridge -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_bridge_round_trip_and_peft_output_equals_paper(conv1d):
    model = Toy(conv1d).double()
    cfg = {"r": 4, "alpha": 8.0, "target_r": 2, "dtype": "float64"}
    base = Toy(conv1d).double()
    _attach(model, **{k: v for k, v in cfg.items() if k != "dtype"})
    _randomise(model, seed=3)
    states = _states(model)
    pm = bridge.build_peft_model(base, "adalora", cfg, ["fc1", "fc2"], states)
    back = bridge.peft_state(pm, "adalora", ["fc1", "fc2"])
    for n in states:
        for k in ("A", "E", "B"):
            assert torch.equal(back[n][k], states[n][k]), (n, k)
    x = torch.randn(6, D_IN, dtype=F64)
    with torch.no_grad():
        y_peft = pm(x).logits
    truth = _paper_model_output(base, x, states, cfg)
    # the twin cancels peft's ranknum epsilon (lora_alpha = alpha·(r + 1e-5)/r): float64 round-off only
    assert torch.allclose(y_peft, truth, rtol=1e-12, atol=1e-12)


def test_peft_own_scale_is_alpha_over_r_plus_eps():
    """The declared departure (card peft-adalora-ranknum-eps-*): peft's ΔW is r/(r + 1e-5) of the paper's."""
    from peft import AdaLoraConfig, get_peft_model
    base = Toy().double()
    r = 4
    pm = get_peft_model(Toy().double(), AdaLoraConfig(init_r=r, target_r=2, lora_alpha=8.0, total_step=10,
                                                      target_modules=["fc1"], init_lora_weights=True))
    layer = bridge.peft_layer(pm, "fc1")
    with torch.no_grad():
        layer.lora_E["default"].fill_(1.0)
    state = bridge.peft_state(pm, "adalora", ["fc1"])["fc1"]
    x = torch.randn(5, D_IN, dtype=F64)
    with torch.no_grad():
        d_peft = layer(x) - base.fc1(x)
    d_paper = ref.forward(x, _w(base.fc1), base.fc1.bias, state, {"r": r, "alpha": 8.0}) - base.fc1(x)
    ratio = float(((d_peft * d_paper).sum() / (d_paper * d_paper).sum()).detach())
    assert abs(ratio - r / (r + 1e-5)) < 1e-12
    assert abs(ratio - 1) > 2e-6  # 2.5e-6 at r = 4: the departure the card declares


# -- init statement ------------------------------------------------------------------------------------------

def _claims(state, W):
    return {c.metric: c for c in ref.init_claims(W, None, state, {"r": 4, "alpha": 8.0})}


def test_init_claims_hold_for_ours_and_fail_for_a_wrong_init():
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(96, 128), fc2=nn.Linear(128, 80)))
    variants.attach(model, variants.config("adalora", r=8, alpha=8.0, target_r=4, target_names=("fc1", "fc2")))
    states = _states(model)
    pits = {"A_gaussian": [], "B_gaussian": []}
    for n, st in states.items():
        c = _claims(st, _w(getattr(model, n)))
        assert c["E_max_abs"].kind == "exact" and c["E_max_abs"].value == 0.0
        for k in pits:
            pits[k].append(c[k].pit)
    for k, p in pits.items():
        pit = torch.cat(p)
        assert ks_uniform(pit) <= ks_critical(pit.numel()), k
    # wrong inits: λ not zero (identity broken), P drawn with std 1 (torch.randn, peft's init_lora_weights=False)
    st = states["fc1"]
    wrong = {**st, "E": torch.full_like(st["E"], 1e-3), "B": torch.randn_like(st["B"])}
    c = _claims(wrong, _w(model.fc1))
    assert c["E_max_abs"].value > 0
    assert ks_uniform(c["B_gaussian"].pit) > ks_critical(c["B_gaussian"].pit.numel())
    # and the right one is not rejected because of its size: A of the same layer passes alone
    assert ks_uniform(c["A_gaussian"].pit) <= ks_critical(c["A_gaussian"].pit.numel())


# -- config checks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,field", [
    ({"r": 4, "target_r": 5}, "target_r"),
    ({"target_r": 0}, "target_r"),
    ({"beta1": 1.0}, "beta1"),
    ({"beta2": 0.0}, "beta2"),
    ({"orth_reg_weight": -0.1}, "orth_reg_weight"),
    ({"deltaT": 0}, "deltaT"),
    ({"total_step": 0}, "total_step"),
    ({"total_step": 10, "tinit": 8, "tfinal": 5}, "tinit"),
    ({"alpha": 0.0}, "alpha"),
])
def test_bad_configs_are_refused_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=field):
        variants.config("adalora", **fields)


def test_allocator_needs_total_step():
    model = Toy().double()
    _attach(model)
    with pytest.raises(ValueError, match="total_step"):
        RankAllocator(model)


# -- orthogonality regulariser -------------------------------------------------------------------------------

def test_regularizer_equals_paper_and_differs_from_peft():
    model = Toy().double()
    _attach(model, orth_reg_weight=0.5, total_step=10)
    _randomise(model, seed=5)
    targets = variants.state_of(model).targets
    paper_sum = sum(ref.orthogonality_regularizer(m.adapter_B, m.adapter_A) for m in targets.values())
    ours = orthogonality_regularizer(model)
    assert torch.allclose(ours, paper_sum, rtol=1e-12)
    x = torch.randn(3, D_IN, dtype=F64)
    out = model(x)
    assert torch.allclose(regularized_loss(model, out.loss), out.loss + 0.5 * paper_sum, rtol=1e-12)
    # its gradient reaches P and Q (it is what keeps them near-orthogonal, §3.1)
    ours.backward()
    assert all(m.adapter_A.grad.abs().sum() > 0 and m.adapter_B.grad.abs().sum() > 0 for m in targets.values())

    # peft: AdaLoraModel.forward adds w · mean over the A and B matrices of the NON-squared ‖cov − I‖_F
    pm = bridge.build_peft_model(Toy().double(), "adalora", {"r": 4, "alpha": 8.0, "target_r": 2, "dtype": "float64",
                                                              "orth_reg_weight": 0.5, "total_step": 10},
                                 ["fc1", "fc2"], _states(model))
    with torch.no_grad():
        raw = pm.base_model.model(x).loss
        with_reg = pm.base_model(x).loss
        plain = pm(x).loss  # a plain PeftModel call goes around AdaLoraModel.forward: no regulariser
    Ps = [m.adapter_B for m in targets.values()]
    Qs = [m.adapter_A for m in targets.values()]
    peft_term = float(with_reg - raw)
    assert abs(peft_term - 0.5 * float(ref.peft_orthogonality_term(Ps, Qs).detach())) < 1e-10
    assert float(plain) == float(raw)
    assert abs(peft_term - 0.5 * float(paper_sum.detach())) > 0.1 * abs(peft_term)  # a different function, not rounding


# -- rank allocation vs peft's RankAllocator ------------------------------------------------------------------

def test_budget_schedule_matches_paper_and_peft():
    from peft.tuners.adalora.layer import RankAllocator as PeftAllocator
    cfg = types.SimpleNamespace(tinit=3, tfinal=4, total_step=20, deltaT=2, target_r=2, beta1=0.85, beta2=0.85)
    peft_alloc = PeftAllocator.__new__(PeftAllocator)
    peft_alloc.peft_config, peft_alloc.init_bgt, peft_alloc.target_bgt = cfg, 12, 4
    for t in range(0, 25):
        ours = budget(t, 12, 4, 3, 4, 20)
        assert ours == peft_alloc.budget_schedule(t)[0], t
        assert ours == int(ref.budget(t, 12, 4, 3, 4, 20) + 1e-12), t  # eq. 12 rounded down (loralib/peft)
    assert budget(3, 12, 4, 3, 4, 20) == 12 and budget(16, 12, 4, 3, 4, 20) == 4 and budget(21, 12, 4, 3, 4, 20) == 4


def test_rank_allocator_masks_agree_with_peft():
    """Same model, same state, same data, same SGD steps: ours (RankAllocator.update_and_allocate) and peft
    (AdaLoraModel.update_and_allocate) zero the same λ at every step, through the budget phase, the final
    forced mask at total_step − tfinal and the re-masking after it. Out of scope: peft's rank_pattern in the
    config and the pruned save (model.py:289-315), DeepSpeed gradients, SVDConv2d."""
    total, tinit, tfinal = 12, 2, 3
    cfg = {"r": 4, "alpha": 8.0, "target_r": 2, "tinit": tinit, "tfinal": tfinal, "deltaT": 2, "total_step": total,
           "beta1": 0.8, "beta2": 0.9}
    model = Toy().double()
    _attach(model, **cfg)
    _randomise(model, seed=2)  # a trained-looking state: λ, P and Q all carry importance (at init λ's dominates)
    pm = bridge.build_peft_model(Toy().double(), "adalora", {**cfg, "dtype": "float64"}, ["fc1", "fc2"], _states(model))
    pm.train()
    ours_alloc = RankAllocator(model)
    ours_p = [p for p in model.parameters() if p.requires_grad]
    # peft's ranknum turns trainable on a float64 (any non-float32) base: the card's declared departure
    # peft-adalora-ranknum-trainable-*; a user's optimiser would move the scale, so it is left out here
    ranknums = [p for n, p in pm.named_parameters() if "ranknum" in n]
    assert ranknums and all(p.requires_grad for p in ranknums)
    peft_p = [p for n, p in pm.named_parameters() if p.requires_grad and "ranknum" not in n]
    opt_o, opt_p = torch.optim.SGD(ours_p, lr=0.1), torch.optim.SGD(peft_p, lr=0.1)
    g = torch.Generator().manual_seed(0)
    masked_any = False
    for step in range(total + 3):
        x = torch.randn(8, D_IN, generator=g, dtype=F64)
        t = torch.randn(8, D_OUT, generator=g, dtype=F64)
        for m, opt in ((model, opt_o), (pm, opt_p)):
            ((m(x).logits - t) ** 2).mean().backward()
            opt.step()
        ours_alloc.update_and_allocate(step)
        pm.base_model.update_and_allocate(step)
        opt_o.zero_grad()
        opt_p.zero_grad()
        peft_E = bridge.peft_state(pm, "adalora", ["fc1", "fc2"])
        for n, layer in variants.state_of(model).targets.items():
            ours_zero = layer.adapter_E.detach().reshape(-1) == 0
            assert torch.equal(ours_zero, peft_E[n]["E"].reshape(-1) == 0), (step, n)
            masked_any |= bool(ours_zero.any())
            # the trajectories stay together (float64; scales equal up to the twin's epsilon cancellation)
            # the trajectories stay together: float64 rounding (different product orders), amplified by the
            # cancelling sum in λ's gradient (measured ≤ 1e-13 absolute against max|λ| ~ 1e-4 over these steps)
            e, pe = layer.adapter_E.detach(), peft_E[n]["E"]
            assert float((e - pe).abs().max()) <= 1e-8 * float(e.abs().max()), (step, n)
        if step == total - tfinal - 1:  # the triplet scores themselves (eq. 7), before peft resets them at the end
            pa, ours_s = pm.base_model.rankallocator, ours_alloc.scores()
            for n in ("fc1", "fc2"):
                key = f"{n}.%s.default"  # peft scores the inner model (AdaLoraModel.model)
                ipt_a = pa._element_score(key % "lora_A").mean(dim=1, keepdim=True)
                ipt_b = pa._element_score(key % "lora_B").mean(dim=0).view(-1, 1)
                peft_s = pa._combine_ipt(pa._element_score(key % "lora_E"), torch.cat([ipt_a, ipt_b], dim=1))
                assert torch.allclose(ours_s[n], peft_s, rtol=1e-6), (n, ours_s[n], peft_s)
        if step >= total - tfinal:  # the final budget b(T) = target_r · layers is in force
            kept = sum(int((variants.state_of(model).targets[n].adapter_E != 0).sum()) for n in ("fc1", "fc2"))
            assert kept <= 2 * cfg["target_r"]
    assert masked_any


def test_target_r_default_follows_r_and_round_trips_through_peft(tmp_path):
    """target_r defaults to peft's 8 where it fits (peft's defaults: init_r 12, target_r 8) and to r below
    that, so variants.config("adalora", r=4) works; the value is written into a peft folder and read back."""
    import json

    import peft

    from audit import models
    ours, theirs = variants.config("adalora"), peft.AdaLoraConfig(total_step=10)
    assert (ours.r, ours.target_r) == (theirs.init_r, theirs.target_r) == (12, 8)
    cfg = variants.config("adalora", r=4, alpha=8.0, total_step=10, target_roles=("q", "v"))
    assert cfg.target_r == 4 and variants.config("adalora", r=6, target_r=3).target_r == 3
    with pytest.raises(ValueError, match="target_r"):
        variants.config("adalora", r=4, target_r=8)  # an explicit budget above r is still refused
    model = variants.attach(models.build("qwen3"), cfg)
    variants.save_peft(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_r"] == 4
    back = variants.load_peft(models.build("qwen3"), tmp_path)
    assert variants.state_of(back).cfg.target_r == 4
