"""Behaviour of every variant on tiny qwen3 and qwen2 (biased q/k/v, non-square k/v).

For each (arch, case) one module-scoped run attaches the adapter, records the init logits, takes one
Adam step and saves the adapter; the tests below assert on what that run recorded.
"""
from __future__ import annotations

import pytest
import torch

import variants
from audit import models
from conftest import ARCHS, all_adapter_tensors, CASE_NAMES, attach, build, calibration_batches, config_of, fresh, variant_of

LR = 1e-2
IDENTITY_TOL = 1e-5
ANTIPASTO_BOUND = 5e-3  # δ ≈ 4e-4 against singular values O(1): declared identity error bound
VBLORA_BOUND = 5e-2  # |ΔW₀|_ij ≤ r·bound² = 1.6e-3 against weights of std 0.02 (audit/cards/vblora.py INIT_OFFSET)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def target_for(y: torch.Tensor) -> torch.Tensor:
    return torch.randn(y.shape, generator=torch.Generator().manual_seed(1234), dtype=y.dtype)


def hook_counts(model) -> dict[str, tuple[int, int]]:
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


class Run:
    """Everything one attach → step → save run recorded."""


_RUNS: dict[tuple[str, str], Run] = {}


def recorded_run(arch: str, case: str, tmp_path_factory) -> Run:
    """attach → init logits → one Adam step (grads recorded) → save; computed once per (arch, case)."""
    key = (arch, case)
    if key in _RUNS:
        return _RUNS[key]
    r = Run()
    r.arch, r.case = arch, case
    model = fresh(arch)
    r.ids = models.example_inputs(model, seed=0)
    r.requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
    r.hooks_before = hook_counts(model)
    with torch.no_grad():
        r.y_base = models.logits(model, r.ids).clone()
    attach(model, case)
    with torch.no_grad():
        r.y_init = models.logits(model, r.ids).clone()
    r.targets = list(variants.state_of(model).targets)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR)
    y = models.logits(model, r.ids)
    loss = ((y - target_for(y)) ** 2).mean()
    loss.backward()
    r.requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    r.grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        r.y_trained = models.logits(model, r.ids).clone()
    r.path = tmp_path_factory.mktemp(f"{arch}-{case}") / "adapter.safetensors"
    variants.save(model, r.path)
    r.model = model  # test_detach_restores_model detaches it; nothing else uses the live model
    _RUNS[key] = r
    return r


@pytest.fixture(scope="module", params=[(a, c) for a in ARCHS for c in CASE_NAMES],
                ids=lambda p: f"{p[0]}-{p[1]}")
def run(request, tmp_path_factory):
    return recorded_run(*request.param, tmp_path_factory)


# -- (a) identity at init ----------------------------------------------------------------------------
def test_identity_at_init(run):
    err = rel(run.y_init, run.y_base)
    if variant_of(run.case) == "antipasto":
        assert 0 < err < ANTIPASTO_BOUND, f"antipasto identity error {err} outside (0, {ANTIPASTO_BOUND})"
    elif variant_of(run.case) == "vblora":  # bank and logits both non-zero at init: ΔW₀ ≠ 0 (variants/vblora.py)
        assert 0 < err < VBLORA_BOUND, f"vblora identity error {err} outside (0, {VBLORA_BOUND})"
    elif run.case == "hra_gs":  # one reflection through span(u) is never the identity (variants/hra.py)
        assert err > 1e-2, f"hra_gs on {run.arch}: a Gram–Schmidt HRA cannot start at the identity ({err})"
    elif run.case == "c3a":  # xavier-uniform kernels at init (peft's default): ΔW ≠ 0 by design
        assert err > 1e-4, f"c3a on {run.arch}: the xavier init must move the outputs ({err})"
    elif run.case == "fourierft":  # c ~ N(0, 1) at init (Algorithm 1): ΔW ≠ 0 by design
        assert err > 1e-3, f"fourierft on {run.arch}: the paper's normal init must move the outputs ({err})"
    else:
        assert err <= IDENTITY_TOL, f"{run.case} on {run.arch}: relative identity error {err}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", [c for c in CASE_NAMES if variant_of(c) == "antipasto"])
def test_antipasto_identity_without_delta(arch, case):
    model = fresh(arch)
    ids = models.example_inputs(model, seed=0)
    with torch.no_grad():
        y0 = models.logits(model, ids)
        attach(model, case)
        for mod in variants.state_of(model).targets.values():
            assert mod.adapter_delta.abs().min() > 0  # the offset is really there
            mod.adapter_delta.zero_()
        y1 = models.logits(model, ids)
    err = rel(y1, y0)
    assert err < IDENTITY_TOL, f"antipasto with δ=0: relative error {err}"


# -- (b) one step changes the output ------------------------------------------------------------------
def test_one_step_changes_logits(run):
    diff = float((run.y_trained - run.y_init).abs().max())
    assert diff > 1e-4, f"{run.case} on {run.arch}: one Adam step moved logits only {diff}"


# -- (c) only adapter tensors train -------------------------------------------------------------------
def test_only_adapter_tensors_get_grads(run):
    adapter = [n for n in run.requires_grad if "adapter_" in n]
    assert adapter, "no adapter parameters registered"
    for n, flag in run.requires_grad.items():
        if "adapter_" in n:
            assert flag, f"adapter parameter {n} is frozen"
            assert run.grads[n] is not None, f"adapter parameter {n} got no grad"
        else:
            assert not flag, f"base parameter {n} still requires grad"
            assert run.grads[n] is None, f"base parameter {n} got a grad"
    # every adapter parameter lives on a target module
    for n in adapter:
        assert n.rsplit(".", 1)[0] in run.targets


# -- (d) save / load ----------------------------------------------------------------------------------
def test_save_load_into_fresh_model(run):
    model = build(run.arch)  # a new build from the same seed, not a copy
    variants.load(model, run.path)
    with torch.no_grad():
        y = models.logits(model, run.ids)
    assert torch.equal(y, run.y_trained)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "adapter_" not in n)


def test_load_into_model_with_same_variant(run):
    model = fresh(run.arch)
    attach(model, run.case)
    variants.load(model, run.path)
    with torch.no_grad():
        y = models.logits(model, run.ids)
    assert torch.equal(y, run.y_trained)


# -- (e) detach ---------------------------------------------------------------------------------------
def test_detach_restores_model(run):
    model = run.model
    variants.detach(model)
    with torch.no_grad():
        y = models.logits(model, run.ids)
    assert torch.equal(y, run.y_base), f"max diff {float((y - run.y_base).abs().max())}"
    assert not [n for n, _ in model.named_parameters() if "adapter_" in n]
    assert not [n for n, _ in model.named_buffers() if "adapter_" in n]
    assert not [n for n, m in model.named_modules() if "adapter_rank" in vars(m)]
    assert hook_counts(model) == run.hooks_before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == run.requires_grad_before
    with pytest.raises(RuntimeError, match="no adapter is attached"):
        variants.state_of(model)


# -- (f) reproducible init ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASE_NAMES)
def test_same_seed_same_adapter(case):
    a, b = attach(fresh("qwen2"), case), attach(fresh("qwen2"), case)
    ta, tb = all_adapter_tensors(a), all_adapter_tensors(b)
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_different_seed_different_adapter():
    a = variants.attach(fresh("qwen3"), config_of("lora", seed=0))
    b = variants.attach(fresh("qwen3"), config_of("lora", seed=1))
    ta, tb = all_adapter_tensors(a), all_adapter_tensors(b)
    assert any(not torch.equal(ta[k], tb[k]) for k in ta)


# -- per-variant facts (VARIANTS.md) ------------------------------------------------------------------
def _grads(run, tensor: str) -> dict[str, torch.Tensor]:
    out = {n: g for n, g in run.grads.items() if n.endswith(".adapter_" + tensor)}
    assert out, f"no adapter_{tensor} parameters"
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("case", ["lora", "lora+rslora", "dora", "eva", "eva_rho2"])
def test_a_grad_zero_b_nonzero_at_step0(tmp_path_factory, arch, case):
    r = recorded_run(arch, case, tmp_path_factory)
    for n, g in _grads(r, "A").items():
        assert torch.count_nonzero(g) == 0, f"{n}: A grad not exactly zero at step 0"
    for n, g in _grads(r, "B").items():
        assert g.abs().max() > 0, f"{n}: B grad is zero at step 0"
    if variant_of(case) == "dora":
        for n, g in _grads(r, "m").items():
            assert g.abs().max() > 0, f"{n}: m grad is zero at step 0"


def test_hra_pair_grads_opposite(tmp_path_factory):
    for arch in ARCHS:
        r = recorded_run(arch, "hra", tmp_path_factory)
        for n, g in _grads(r, "u").items():
            g = g.double()
            for k in range(0, g.shape[0], 2):
                g0, g1 = g[k], g[k + 1]
                assert g0.norm() > 0, f"{n}: u[{k}] got no gradient"
                assert (g0 + g1).norm() <= 1e-6 * g0.norm(), \
                    f"{n}: pair {k}: |g0+g1|={float((g0 + g1).norm())} vs |g0|={float(g0.norm())}"


def test_road4_dead_cos_theta_and_sin_alpha(tmp_path_factory):
    g = config_of("road_4").group_size
    for arch in ARCHS:
        r = recorded_run(arch, "road_4", tmp_path_factory)
        for n, gt in _grads(r, "theta").items():
            gt = gt.reshape(-1, 2, g)
            assert torch.count_nonzero(gt[:, 0]) == 0, f"{n}: cos-θ grad not zero"
            assert gt[:, 1].abs().max() > 0, f"{n}: sin-θ grad is zero"
        for n, ga in _grads(r, "alpha").items():
            ga = ga.reshape(-1, 2, g)
            assert torch.count_nonzero(ga[:, 1]) == 0, f"{n}: sin-α grad not zero"
            assert ga[:, 0].abs().max() > 0, f"{n}: cos-α grad is zero"


@pytest.mark.parametrize("case", ["road", "road_2"])
def test_road_1_2_theta_and_alpha_train(tmp_path_factory, case):
    for arch in ARCHS:
        r = recorded_run(arch, case, tmp_path_factory)
        for t in ("theta", "alpha"):
            for n, g in _grads(r, t).items():
                assert g.abs().max() > 0, f"{n}: zero grad"


def test_delora_paper_lambda_grad_zero(tmp_path_factory):
    for arch in ARCHS:
        r = recorded_run(arch, "delora", tmp_path_factory)
        for n, g in _grads(r, "lam").items():
            assert torch.count_nonzero(g) == 0, f"{n}: λ grad {g} not zero (paper init cancels)"
        for t in ("A", "B"):
            for n, g in _grads(r, t).items():
                assert g.abs().max() > 0, f"{n}: zero grad at step 0"
        assert not [n for n in r.grads if n.endswith(("adapter_C", "adapter_D", "adapter_w_norm"))]


def test_delora_peft_only_b_grad(tmp_path_factory):
    for arch in ARCHS:
        r = recorded_run(arch, "delora_peft", tmp_path_factory)
        for t in ("A", "lam"):
            for n, g in _grads(r, t).items():
                assert torch.count_nonzero(g) == 0, f"{n}: grad not zero at step 0"
        for n, g in _grads(r, "B").items():
            assert g.abs().max() > 0, f"{n}: B grad zero"


@pytest.mark.parametrize("case", ["antipasto", "antipasto_U", "antipasto_calib"])
def test_antipasto_delta_and_t_train(tmp_path_factory, case):
    for arch in ARCHS:
        r = recorded_run(arch, case, tmp_path_factory)
        for t in ("delta", "T"):
            for n, g in _grads(r, t).items():
                assert g.abs().max() > 0, f"{n}: zero grad at step 0"


def test_antipasto_calibration_changes_selection():
    """With calibration data the kept directions are re-selected; W_res must stay consistent."""
    plain, calib = attach(fresh("qwen3"), "antipasto"), attach(fresh("qwen3"), "antipasto_calib")
    sp, sc = variants.state_of(plain), variants.state_of(calib)
    changed = 0
    for n in sp.targets:
        a, b = sp.targets[n], sc.targets[n]
        changed += not torch.equal(a.adapter_S, b.adapter_S)
        # W_res + U S Vh reproduces the original weight in both
        for mod, st in ((a, sp), (b, sc)):
            w = mod.weight.double() + (mod.adapter_U.double() * mod.adapter_S.double()) @ mod.adapter_Vh.double()
            assert torch.allclose(w, st.original_weights[n].double(), atol=1e-6)
    assert changed > 0, "calibration selected the same directions everywhere"


@pytest.mark.parametrize("case,leaves", [("ia3", {"k_proj", "v_proj"}), ("ia3_ff", {"down_proj"})])
def test_ia3_default_targets(case, leaves):
    model = attach(fresh("qwen3"), case)
    targets = variants.state_of(model).targets
    assert {n.rsplit(".", 1)[-1] for n in targets} == leaves
    assert len(targets) == 2 * len(leaves)  # every layer of the 2-layer model


def test_ia3_ff_scales_input_ia3_scales_output():
    m1 = attach(fresh("qwen3"), "ia3")
    m2 = attach(fresh("qwen3"), "ia3_ff")
    for n, mod in variants.state_of(m1).targets.items():
        assert mod.adapter_l.shape == (mod.out_features,)
    for n, mod in variants.state_of(m2).targets.items():
        assert mod.adapter_l.shape == (mod.in_features,)


def test_eva_rho2_redistributes_ranks():
    model = attach(fresh("qwen3"), "eva_rho2")
    st = variants.state_of(model)
    ranks = {n: m.adapter_rank for n, m in st.targets.items()}
    # the budget is r × (number of candidate layers); redistribution moves rank between layers
    n_candidates = len(variants.select_targets(fresh("qwen3"), config_of("eva"), variants.REGISTRY["eva"].default_roles))
    assert sum(ranks.values()) == 4 * n_candidates
    assert len(set(ranks.values())) > 1, f"rho=2 left every rank equal: {ranks}"
    for n, m in st.targets.items():
        a = m.adapter_A.double()
        assert torch.allclose(a @ a.t(), torch.eye(a.shape[0], dtype=torch.float64), atol=1e-5), n


def _q0_output(case: str, fill) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Attach ``case`` to layer-0 q_proj of tiny qwen2 (biased), fill the adapter, return (layer, x, y)."""
    model = variants.attach(fresh("qwen2"), config_of(case, target_roles=("q",), layers=(0,)))
    layer = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        fill(layer)
        x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(7))
        return layer, x, layer(x)


def _fill_b(layer):
    layer.adapter_B.copy_(torch.randn(layer.adapter_B.shape, generator=torch.Generator().manual_seed(3)))


def test_rslora_scale_is_alpha_over_sqrt_r():
    layer, x, y_lora = _q0_output("lora", _fill_b)
    _, _, y_rs = _q0_output("lora+rslora", _fill_b)
    base = torch.nn.functional.linear(x, layer.weight, layer.bias)
    r = config_of("lora").r
    assert torch.allclose(y_rs - base, (y_lora - base) * r ** 0.5, rtol=1e-5, atol=1e-6)
    a, b = layer.adapter_A, layer.adapter_B
    assert torch.allclose(y_lora - base, (8.0 / r) * (x @ a.t()) @ b.t(), rtol=1e-5, atol=1e-6)


def test_dora_merged_weight_bias_not_scaled():
    def fill(layer):
        _fill_b(layer)
        layer.adapter_m.mul_(1.5)
    layer, x, y = _q0_output("dora", fill)
    assert layer.bias is not None and layer.bias.abs().max() > 0
    s = 8.0 / config_of("dora").r
    v = layer.weight + s * layer.adapter_B @ layer.adapter_A
    w_eff = (layer.adapter_m / v.norm(dim=1))[:, None] * v  # per output row
    assert torch.allclose(y, x @ w_eff.t() + layer.bias, rtol=1e-5, atol=1e-5)


def test_ia3_scales_bias_too():
    model = variants.attach(fresh("qwen2"), config_of("ia3", layers=(0,)))
    layer = model.model.layers[0].self_attn.k_proj
    assert layer.bias.abs().min() > 0
    with torch.no_grad():
        layer.adapter_l.copy_(torch.rand(layer.out_features, generator=torch.Generator().manual_seed(5)) + 0.5)
        x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(6))
        y = layer(x)
    l = layer.adapter_l
    assert torch.allclose(y, x @ (l[:, None] * layer.weight).t() + l * layer.bias, rtol=1e-5, atol=1e-6)


def test_eva_rank_zero_layer_round_trip(tmp_path):
    model = fresh("mlp")
    cfg = variants.config("eva", r=1, rho=4.0)
    variants.attach(model, cfg, calibration_data=calibration_batches(model))
    targets = variants.state_of(model).targets
    assert len(targets) < 4, "premise: some layer got rank 0 and lost its adapter"
    dropped = [n for n in ("layers.0.up_proj", "layers.0.down_proj", "layers.1.up_proj", "layers.1.down_proj")
               if n not in targets]
    mods = dict(model.named_modules())
    for n in dropped:  # a rank-0 layer carries nothing
        assert not mods[n]._forward_hooks and "adapter_rank" not in vars(mods[n])
        assert not [k for k, _ in mods[n].named_parameters() if "adapter_" in k]
    ids = models.example_inputs(model, seed=0)
    with torch.no_grad():
        for p in all_adapter_tensors(model).values():
            p.add_(0.01)
        y = models.logits(model, ids)
    variants.save(model, tmp_path / "eva.safetensors")
    other = fresh("mlp")
    variants.load(other, tmp_path / "eva.safetensors")
    assert list(variants.state_of(other).targets) == list(targets)
    with torch.no_grad():
        assert torch.equal(models.logits(other, ids), y)


# -- bf16 base ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,tol", [("lora", 1e-5), ("pissa", 1e-2), ("dora", 1e-2)])
def test_bf16_identity(case, tol):
    model = fresh("qwen3", torch.bfloat16)
    ids = models.example_inputs(model, seed=0)
    with torch.no_grad():
        y0 = models.logits(model, ids).float()
        attach(model, case)
        y1 = models.logits(model, ids).float()
    for n, p in all_adapter_tensors(model).items():
        assert p.dtype == torch.float32, n  # adapters default to fp32 on a bf16 base
    err = rel(y1, y0)
    assert err <= tol, f"{case} on bf16: relative identity error {err}"
    if case == "lora":
        assert torch.equal(y1, y0)
