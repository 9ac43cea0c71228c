"""The peft bridge (references/peft_bridge) round-trips canonical adapter states, and peft's forward with a copied
state equals the merged-weight math of references/STATE_LAYOUT.md, written again here independently in float64.

Models are built offline with fixed seeds: a toy module with non-square nn.Linear layers (12 -> 16 -> 12, with
biases, plus a decoy `block.up_proj` that must never be targeted), the same with transformers Conv1D layers, and a
tiny Qwen3 (k/v projections 32 -> 16, MLP 32 -> 48 -> 32).
Tolerances (relative Frobenius error of a layer output vs the float64 reference): float32 model 2e-6, float64 model
1e-10 (peft accepts float64 bases for every variant here), bf16 base 1e-2 (outputs are rounded to bf16).
"""
from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from references.peft_bridge import (MAPPINGS, PEFT_VARIANTS, TRANSFORMS, BridgeUnsupported, adapted_module_names,
                                    build_peft_model, peft_layer, peft_state, peft_trainable_names)

REPO = Path(__file__).resolve().parents[1]
TOL = {torch.float32: 2e-6, torch.float64: 1e-10, torch.bfloat16: 1e-2}

# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.up_proj = nn.Linear(12, 16, bias=True)
        self.down_proj = nn.Linear(16, 12, bias=True)
        self.block = nn.ModuleDict({"up_proj": nn.Linear(12, 16)})  # decoy: same leaf name as a target

    def forward(self, x):
        return self.down_proj(torch.tanh(self.up_proj(x))) + 0.1 * self.block["up_proj"](x).sum(-1, keepdim=True)


class ToyConv1D(nn.Module):
    def __init__(self):
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.c_fc = Conv1D(16, 12)     # weight (d_in 12, d_out 16)
        self.c_proj = Conv1D(12, 16)
        with torch.no_grad():
            self.c_fc.bias.normal_()
            self.c_proj.bias.normal_()

    def forward(self, x):
        return self.c_proj(torch.tanh(self.c_fc(x)))


def toy(dtype=torch.float32):
    torch.manual_seed(0)
    return Toy().to(dtype)


def toy_conv1d(dtype=torch.float32):
    torch.manual_seed(0)
    return ToyConv1D().to(dtype)


def qwen3(dtype=torch.float32):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return Qwen3ForCausalLM(cfg).to(dtype).eval()


TOY_TARGETS = ["up_proj", "down_proj"]
CONV_TARGETS = ["c_fc", "c_proj"]
QWEN_TARGETS = [f"model.layers.0.{p}" for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


def dense_wb(mod):
    """Canonical W (d_out, d_in) and b (or None) of a Linear or Conv1D, in float64."""
    w = mod.weight.detach().double()
    if type(mod).__name__ == "Conv1D":
        w = w.t()
    b = None if getattr(mod, "bias", None) is None else mod.bias.detach().double()
    return w.clone(), b


# ---------------------------------------------------------------------------------------------------------------
# configs and random non-identity states (test-local)
# ---------------------------------------------------------------------------------------------------------------
CASES = {  # id -> (variant, cfg)
    "lora": ("lora", {"r": 4, "alpha": 6.0, "use_rslora": False}),
    "rslora": ("lora", {"r": 4, "alpha": 6.0, "use_rslora": True}),
    "pissa": ("pissa", {"r": 3, "alpha": 5.0}),
    "corda": ("corda", {"r": 3, "alpha": 5.0, "corda_method": "kpm"}),
    "loraga": ("loraga", {"r": 3, "alpha": 5.0, "use_rslora": True, "direction": "ArBr"}),
    "dora": ("dora", {"r": 4, "alpha": 6.0}),
    "ia3": ("ia3", {}),
    "ia3_ff": ("ia3_ff", {}),
    "hra": ("hra", {"r": 4}),
    "delora": ("delora", {"r": 4, "lambda0": 3.0, "init_style": "peft"}),
    "eva": ("eva", {"r": 4, "alpha": 8.0, "rho": 2.0}),
    "road_1": ("road", {"road_variant": "road_1", "group_size": 4}),
    "road_2": ("road", {"road_variant": "road_2", "group_size": 4}),
    "road_4": ("road", {"road_variant": "road_4", "group_size": 4}),
    "miss": ("miss", {"r": 4}),
    "miss_bat": ("miss", {"r": 4, "mode": "bat"}),
    "miss_mini": ("miss", {"r": 4, "mode": "mini", "mini_r": 2}),
    "hira": ("hira", {"r": 4}),
}
EVA_RANKS = (2, 5, 3, 1, 6, 4, 2)  # cycled over targets: r_l != cfg r, so scaling must use the config r


def road_size(cfg, d_out):
    return {"road_1": d_out // 2, "road_2": d_out, "road_4": 2 * d_out}[cfg["road_variant"]]


def random_state(variant, cfg, mod, index, dtype, seed=0):
    w, _ = dense_wb(mod)
    d_out, d_in = w.shape
    g = torch.Generator().manual_seed(1000 * seed + 17 * index + zlib.crc32(variant.encode()) % 97)

    def rn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    r = cfg.get("r", 8)
    if variant in ("lora", "pissa", "dora", "corda", "loraga"):
        st = {"A": rn(r, d_in, scale=0.3), "B": rn(d_out, r, scale=0.3)}
        if variant in ("pissa", "corda", "loraga"):
            st["weight"] = (w + 0.1 * torch.randn(d_out, d_in, generator=g, dtype=torch.float64)).to(dtype)
        if variant == "dora":
            st["m"] = (w.norm(dim=1) * (1 + 0.3 * torch.rand(d_out, generator=g, dtype=torch.float64))).to(dtype)
        return st
    if variant == "eva":
        rl = EVA_RANKS[index % len(EVA_RANKS)]
        return {"A": rn(rl, d_in, scale=0.3), "B": rn(d_out, rl, scale=0.3)}
    if variant == "ia3":
        return {"l": 1 + rn(d_out, scale=0.3)}
    if variant == "ia3_ff":
        return {"l": 1 + rn(d_in, scale=0.3)}
    if variant == "hra":
        return {"u": rn(r, d_in)}
    if variant == "delora":
        b = rn(d_out, r, scale=0.3)
        b[:, 0] *= 1e-6  # ||b_0|| < 1e-4: the clamp is active for one rank-1 term
        return {"A": rn(r, d_in, scale=0.3), "B": b, "lam": torch.tensor([2.5], dtype=dtype),
                "w_norm": (0.5 + torch.rand(d_in, generator=g, dtype=torch.float64)).to(dtype)}
    if variant == "road":
        n = road_size(cfg, d_out)
        return {"theta": rn(n, scale=0.7), "alpha": 1 + rn(n, scale=0.3)}
    if variant == "hira":
        return {"A": rn(r, d_in, scale=0.3), "B": rn(d_out, r, scale=0.3)}
    if variant == "miss":
        mode = cfg.get("mode", "balance")
        shape = {"balance": (r, d_out), "bat": (d_out // r, r, r), "mini": (r, cfg.get("mini_r", 1))}[mode]
        return {"D": rn(*shape, scale=0.3)}
    raise AssertionError(variant)


def random_states(variant, cfg, model, targets, dtype, seed=0):
    return {n: random_state(variant, cfg, model.get_submodule(n), i, dtype, seed) for i, n in enumerate(targets)}


# ---------------------------------------------------------------------------------------------------------------
# independent float64 merged-weight formulas (references/STATE_LAYOUT.md)
# ---------------------------------------------------------------------------------------------------------------
def householder_product(u):  # u (r, d_in) rows -> H_0 H_1 ... H_{r-1}
    d = u.shape[1]
    out = torch.eye(d, dtype=torch.float64)
    for i in range(u.shape[0]):
        ui = u[i].reshape(-1, 1)
        out = out @ (torch.eye(d, dtype=torch.float64) - 2 * ui @ ui.t() / (ui.t() @ ui))
    return out


def road_matrix(variant, g, theta, alpha):
    n_out = {"road_1": 2 * theta.numel(), "road_2": theta.numel(), "road_4": theta.numel() // 2}[variant]
    c = torch.empty(n_out, dtype=torch.float64)
    s = torch.empty(n_out, dtype=torch.float64)
    for k in range(n_out):
        gi, kk = divmod(k, g)
        if variant == "road_1":
            i = gi * (g // 2) + (kk % (g // 2))
            c[k], s[k] = alpha[i] * torch.cos(theta[i]), alpha[i] * torch.sin(theta[i])
        elif variant == "road_2":
            c[k], s[k] = alpha[k] * torch.cos(theta[k]), alpha[k] * torch.sin(theta[k])
        else:
            ic, is_ = gi * 2 * g + kk, gi * 2 * g + g + kk
            c[k], s[k] = alpha[ic] * torch.cos(theta[ic]), alpha[is_] * torch.sin(theta[is_])
    R = torch.zeros(n_out, n_out, dtype=torch.float64)
    for gi in range(n_out // g):
        for j in range(g // 2):
            p, q = gi * g + j, gi * g + j + g // 2
            R[p, p], R[p, q] = c[p], -s[p]
            R[q, q], R[q, p] = c[q], s[q]
    return R


def merged(variant, cfg, w, b, st):
    """(W_eff, b_eff) in float64 from the base (w, b) and a canonical state."""
    st = {k: v.double() for k, v in st.items()}
    r = cfg.get("r", 8)
    if variant in ("lora", "pissa", "dora", "corda", "loraga"):
        s = cfg["alpha"] / (r ** 0.5 if cfg.get("use_rslora") else r)
        base = st["weight"] if variant in ("pissa", "corda", "loraga") else w
        v = base + s * st["B"] @ st["A"]
        if variant == "dora":
            v = (st["m"] / v.norm(dim=1)).reshape(-1, 1) * v
        return v, b
    if variant == "eva":
        return w + (cfg["alpha"] / cfg["r"]) * st["B"] @ st["A"], b
    if variant == "ia3":
        return st["l"].reshape(-1, 1) * w, None if b is None else st["l"] * b
    if variant == "ia3_ff":
        return w * st["l"].reshape(1, -1), b
    if variant == "hra":
        return w @ householder_product(st["u"]), b
    if variant == "delora":
        A, B = st["A"], st["B"]
        xi = 1 / (B.norm(dim=0).clamp_min(1e-4) * A.norm(dim=1).clamp_min(1e-4))
        return w + (st["lam"] / r) * (B * xi) @ A * st["w_norm"].reshape(1, -1), b
    if variant == "road":
        R = road_matrix(cfg["road_variant"], cfg["group_size"], st["theta"], st["alpha"])
        return R @ w, None if b is None else R @ b
    if variant == "hira":  # W ⊙ (1 + BA)
        return w * (1 + st["B"] @ st["A"]), b
    if variant == "miss":  # column k of ΔW is D[k mod r]; bat: block (i, j) gets W_ij B_i + B_i
        D, mode = st["D"], cfg.get("mode", "balance")
        if mode == "bat":
            rb = D.shape[-1]
            dw = torch.zeros_like(w)
            for i in range(w.shape[0] // rb):
                for j in range(w.shape[1] // rb):
                    blk = w[i * rb:(i + 1) * rb, j * rb:(j + 1) * rb]
                    dw[i * rb:(i + 1) * rb, j * rb:(j + 1) * rb] = blk @ D[i] + D[i]
            return w + dw, b
        if mode == "mini":
            D = torch.cat([D] * (w.shape[0] // D.shape[1]), dim=1)
        return w + torch.stack([D[k % D.shape[0]] for k in range(w.shape[1])], dim=1), b
    raise AssertionError(variant)


def rel_err(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


def layer_check(variant, cfg, base, pm, targets, states, dtype, seed=1):
    """Every target: peft layer(x) vs x W_eff^T + b_eff; returns the errors and the adapter's effect size."""
    g = torch.Generator().manual_seed(seed)
    errs, effects = {}, {}
    for n in targets:
        w, b = dense_wb(base.get_submodule(n))
        x = torch.randn(2, 5, w.shape[1], generator=g, dtype=torch.float64).to(dtype)
        with torch.no_grad():
            y = peft_layer(pm, n)(x)
        we, be = merged(variant, cfg, w, b, states[n])
        ref = x.double() @ we.t() + (0 if be is None else be)
        plain = x.double() @ w.t() + (0 if b is None else b)
        assert y.dtype == dtype
        errs[n] = rel_err(y, ref)
        effects[n] = ((ref - plain).norm() / plain.norm()).item()
    return errs, effects


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(now[k], v), f"base model tensor {k} was mutated"


def assert_states_equal(got, want):
    assert got.keys() == want.keys()
    for n in want:
        assert got[n].keys() == want[n].keys(), n
        for k in want[n]:
            assert got[n][k].dtype == want[n][k].dtype, (n, k)
            assert torch.equal(got[n][k], want[n][k]), (n, k)


# ---------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------
def _shared_fields():
    from references.peft_bridge._core import TARGETING, targeting_fields
    from references.peft_bridge.lora import LORA_CLASS_REST
    return set(targeting_fields(*TARGETING)) | set(LORA_CLASS_REST)


SHARED_FIELDS = _shared_fields()


def test_variant_list_and_mapping_data():
    # discovered from the method modules: every card that names peft as a reference has a mapping
    from audit.cards import CARDS
    assert set(PEFT_VARIANTS) == {n for n, c in CARDS.items() if "peft" in c.references}
    assert set(MAPPINGS) == set(PEFT_VARIANTS)
    import peft

    for v, m in MAPPINGS.items():
        assert m.variant == v
        assert m.tensors, v
        assert m.subject_config is not None and m.subject_defaults is not None, v
        assert m.peft_exports and all(hasattr(peft, n) for n in m.peft_exports), v
        for t in m.tensors:
            assert t.transform in TRANSFORMS, (v, t)
            assert t.kind in ("parameter", "buffer", "base weight"), (v, t)
        cls = getattr(peft, m.peft_config_class.removeprefix("peft."))
        fields = {f.name for f in dataclasses.fields(cls)}
        for c in m.config:  # every peft field named in the mapping data exists on the peft config class,
            # except the shared entries every tuner config is given (a class without exclude_modules, say)
            # (or a field only older releases had: never an axis, which the installed release must offer)
            assert c.peft.split(".")[0] in fields or c in SHARED_FIELDS or c.effect != "axis", (v, c.peft)
        assert m.describe().startswith(f"### {v}")
    assert {t.canonical: t.transform for t in MAPPINGS["hra"].tensors} == {"u": "transpose"}
    assert {t.canonical: t.transform for t in MAPPINGS["ia3"].tensors} == {"l": "reshape (d_out,1)"}
    assert {t.canonical: t.transform for t in MAPPINGS["ia3_ff"].tensors} == {"l": "reshape (1,d_in)"}
    assert {(c.ours, c.peft) for c in MAPPINGS["road"].config} >= {("road_variant", "variant"),
                                                                   ("group_size", "group_size")}
    assert ("lambda0", "delora_lambda") in {(c.ours, c.peft) for c in MAPPINGS["delora"].config}


def test_every_peft_option_is_an_axis_or_named_with_why_it_cannot_change_the_function():
    """The options ledger: each field of a method's peft config class (the installed release) is named in the
    mapping with its effect; none that changes the function is held fixed ("unaudited"), so an option peft adds
    cannot go unaudited unnoticed. Older releases' fields are listed per release by the peft matrix."""
    import peft

    from audit.subjects.peft import Peft
    from references.peft_bridge._core import EFFECTS

    subject = Peft()
    base = {f.name for f in dataclasses.fields(peft.PeftConfig)}
    for v, m in MAPPINGS.items():
        assert all(c.effect in EFFECTS for c in m.config), v
        assert all((c.effect == "axis") == (c.ours is not None) for c in m.config), v
        cls = getattr(peft, m.peft_config_class.removeprefix("peft."))
        fields = {f.name for f in dataclasses.fields(cls)} - base
        named = [c.peft.split(".")[0] for c in m.config]
        assert len(named) == len(set(named)) or bool(m.nested), (v, sorted({n for n in named if named.count(n) > 1}))
        assert subject.option_gaps(v) == {"unnamed": [], "unaudited": []}, (v, subject.option_gaps(v))
        assert fields <= set(named), (v, sorted(fields - set(named)))


def test_option_gaps_name_an_unclassified_option():
    """A release whose config class has a field the mapping does not name reports it (what the matrix lists)."""
    import dataclasses as dc

    import peft

    from audit.subjects.peft import Peft

    @dc.dataclass
    class Newer(peft.HRAConfig):
        brand_new_option: int = 0

    old = peft.HRAConfig
    peft.HRAConfig = Newer
    try:
        gaps = Peft().option_gaps("hra")["unnamed"]
        assert "brand_new_option" in gaps and "r" not in gaps
    finally:
        peft.HRAConfig = old


MODELS = {"toy": (toy, TOY_TARGETS), "qwen3": (qwen3, QWEN_TARGETS)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("model_id", list(MODELS))
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_merged_weight_and_round_trips(case, model_id, dtype):
    variant, cfg = CASES[case]
    cfg = {**cfg, "dtype": None if dtype == torch.float64 else "float32"}
    make, targets = MODELS[model_id]
    base = make(dtype)
    snap = snapshot(base)
    states = random_states(variant, cfg, base, targets, dtype)

    pm = build_peft_model(base, variant, cfg, targets, states)

    assert_unchanged(base, snap)                              # the given model is never mutated
    assert adapted_module_names(pm) == set(targets)           # exactly the targets (toy: not block.up_proj)
    assert not pm.training
    assert pm.bridge_info["adapter_dtype"] == str(dtype).removeprefix("torch.")
    assert pm.bridge_info["adapter_dtype_matches"]
    layer = peft_layer(pm, targets[0])
    m = MAPPINGS[variant]
    assert f"{type(layer).__module__}.{type(layer).__qualname__}" == m.peft_layer_class
    assert type(pm.peft_config["default"]).__name__ == m.peft_config_class.removeprefix("peft.")

    errs, effects = layer_check(variant, cfg, base, pm, targets, states, dtype)
    assert max(errs.values()) <= TOL[dtype], errs
    assert min(effects.values()) > 1e-3, effects              # the state is far from the identity: not vacuous

    assert_states_equal(peft_state(pm, variant, targets), states)


@pytest.mark.parametrize("case", list(CASES))
def test_qwen3_logits_match_merged_model(case):
    """Whole-model check in float64: peft's logits equal those of a copy whose targets carry W_eff, b_eff."""
    variant, cfg = CASES[case]
    cfg = {**cfg, "dtype": None}
    targets = QWEN_TARGETS[1:3] + QWEN_TARGETS[-2:]  # k, v, up, down: non-square
    base = qwen3(torch.float64)
    states = random_states(variant, cfg, base, targets, torch.float64, seed=3)
    pm = build_peft_model(base, variant, cfg, targets, states)
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for n in targets:
            mod = ref.get_submodule(n)
            we, be = merged(variant, cfg, *dense_wb(mod), states[n])
            mod.weight.copy_(we)
            assert (be is None) == (mod.bias is None)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got, want, plain = pm(input_ids=ids).logits, ref(input_ids=ids).logits, base(input_ids=ids).logits
    assert rel_err(got, want) <= 1e-10
    assert rel_err(plain, want) > 1e-3


@pytest.mark.parametrize("case", list(CASES))
def test_peft_state_reads_live_tensors_after_a_step(case):
    """After an optimizer step inside peft, peft_state returns the moved tensors, and a fresh bridge model built
    from them reproduces the stepped model's outputs (so the inverse mapping is the inverse of the forward one)."""
    variant, cfg = CASES[case]
    cfg = {**cfg, "dtype": None}
    base = toy(torch.float64)
    states = random_states(variant, cfg, base, TOY_TARGETS, torch.float64, seed=7)
    pm = build_peft_model(base, variant, cfg, TOY_TARGETS, states)
    trainable = [p for p in pm.parameters() if p.requires_grad]
    assert peft_trainable_names(pm) and all(".base_layer." not in n for n in peft_trainable_names(pm))
    opt = torch.optim.SGD(trainable, lr=0.05)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 12, generator=g, dtype=torch.float64)
    t = torch.randn(4, 12, generator=g, dtype=torch.float64)
    loss = ((pm(x) - t) ** 2).sum()
    loss.backward()
    opt.step()

    after = peft_state(pm, variant, TOY_TARGETS)
    moved = [k for n in TOY_TARGETS for k in after[n] if not torch.equal(after[n][k], states[n][k])]
    assert moved, "an SGD step changed nothing that peft_state reads"
    frozen = {t.canonical for t in MAPPINGS[variant].tensors if t.kind != "parameter"}
    assert not frozen & set(moved)                           # w_norm / W_res stay put
    pm2 = build_peft_model(base, variant, cfg, TOY_TARGETS, after)
    with torch.no_grad():
        assert rel_err(pm2(x), pm(x).double()) <= 1e-12


def test_eva_scaling_uses_config_rank_and_rank0_layers_are_skipped():
    base = qwen3(torch.float64)
    for rslora in (False, True):
        cfg = {"r": 4, "alpha": 8.0, "use_rslora": rslora, "dtype": None}
        states = random_states("eva", cfg, base, QWEN_TARGETS, torch.float64)
        pm = build_peft_model(base, "eva", cfg, QWEN_TARGETS, states)
        for i, n in enumerate(QWEN_TARGETS):
            layer = peft_layer(pm, n)
            assert layer.r["default"] == EVA_RANKS[i % len(EVA_RANKS)]
            assert layer.scaling["default"] == pytest.approx(2.0, rel=1e-15)  # alpha / r, for every r_l
    cfg = {"r": 4, "alpha": 8.0, "dtype": None}
    states = random_states("eva", cfg, base, QWEN_TARGETS[:3], torch.float64)
    k = QWEN_TARGETS[1]
    states[k] = {"A": torch.zeros(0, 32, dtype=torch.float64), "B": torch.zeros(16, 0, dtype=torch.float64)}
    pm = build_peft_model(base, "eva", cfg, QWEN_TARGETS[:3], states)
    assert adapted_module_names(pm) == {QWEN_TARGETS[0], QWEN_TARGETS[2]}
    back = peft_state(pm, "eva", QWEN_TARGETS[:3])
    assert back[k]["A"].shape == (0, 32) and back[k]["B"].shape == (16, 0)
    assert_states_equal(back, states)


CONV_CASES = ["lora", "pissa", "dora", "eva", "ia3", "ia3_ff", "hira"]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv1d_layers(case):
    variant, cfg = CASES[case]
    cfg = {**cfg, "dtype": None}
    base = toy_conv1d(torch.float64)
    states = random_states(variant, cfg, base, CONV_TARGETS, torch.float64)
    pm = build_peft_model(base, variant, cfg, CONV_TARGETS, states)
    errs, effects = layer_check(variant, cfg, base, pm, CONV_TARGETS, states, torch.float64)
    assert max(errs.values()) <= TOL[torch.float64], errs
    assert min(effects.values()) > 1e-3
    assert_states_equal(peft_state(pm, variant, CONV_TARGETS), states)


@pytest.mark.parametrize("case", ["hra", "delora", "road_1", "miss"])
def test_conv1d_refused_where_peft_has_no_conv1d(case):
    variant, cfg = CASES[case]
    base = toy_conv1d()
    states = random_states(variant, cfg, base, CONV_TARGETS, torch.float32)
    with pytest.raises(BridgeUnsupported, match="Conv1D"):
        build_peft_model(base, variant, cfg, CONV_TARGETS, states)


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_base_with_float32_adapters(case):
    """autocast_adapter_dtype keeps the adapter in float32 over a bf16 base; outputs are bf16-rounded."""
    variant, cfg = CASES[case]
    cfg = {**cfg, "dtype": "float32"}
    base = toy(torch.bfloat16)
    states = random_states(variant, cfg, base, TOY_TARGETS, torch.float32)
    states = {n: {k: (v.to(torch.bfloat16) if k == "weight" else v) for k, v in s.items()} for n, s in states.items()}
    pm = build_peft_model(base, variant, cfg, TOY_TARGETS, states)
    assert pm.bridge_info["autocast_adapter_dtype"] and pm.bridge_info["adapter_dtype"] == "float32"
    for n in TOY_TARGETS:
        layer = peft_layer(pm, n)
        assert layer.get_base_layer().weight.dtype == torch.bfloat16
        for p in (p for name, p in layer.named_parameters() if "base_layer" not in name):
            assert p.dtype == torch.float32
    errs, _ = layer_check(variant, cfg, base, pm, TOY_TARGETS, states, torch.bfloat16)
    assert max(errs.values()) <= TOL[torch.bfloat16], errs
    assert_states_equal(peft_state(pm, variant, TOY_TARGETS), states)


def test_dtype_plan_requests_peft_can_and_cannot_honour():
    base = toy(torch.bfloat16)
    cfg = {"r": 4, "alpha": 4.0}
    states = random_states("lora", cfg, base, TOY_TARGETS, torch.bfloat16)
    for want, got in (("bfloat16", torch.bfloat16), (None, torch.bfloat16), ("float32", torch.float32)):
        pm = build_peft_model(base, "lora", {**cfg, "dtype": want}, TOY_TARGETS, states)
        assert peft_layer(pm, "up_proj").lora_A["default"].weight.dtype == got
        assert pm.bridge_info["adapter_dtype_matches"]
    base32 = toy(torch.float32)
    states32 = random_states("lora", cfg, base32, TOY_TARGETS, torch.float32)
    pm = build_peft_model(base32, "lora", {**cfg, "dtype": "float64"}, TOY_TARGETS, states32)
    assert peft_layer(pm, "up_proj").lora_A["default"].weight.dtype == torch.float32  # peft never upcasts fp32
    assert not pm.bridge_info["adapter_dtype_matches"]


def test_delora_paper_init_is_refused():
    base = toy()
    cfg = {"r": 4, "lambda0": 3.0, "init_style": "paper"}
    states = random_states("delora", cfg, base, TOY_TARGETS, torch.float32)
    paper = {n: {**s, "C": s["A"].clone(), "D": s["B"].clone()} for n, s in states.items()}
    with pytest.raises(BridgeUnsupported, match="frozen copy"):
        build_peft_model(base, "delora", cfg, TOY_TARGETS, paper)
    with pytest.raises(BridgeUnsupported, match="frozen copy"):  # C/D present, whatever init_style says
        build_peft_model(base, "delora", {**cfg, "init_style": "peft"}, TOY_TARGETS, paper)
    assert issubclass(BridgeUnsupported, NotImplementedError)
    pm = build_peft_model(base, "delora", {**cfg, "init_style": "peft"}, TOY_TARGETS, states)  # peft init: fine
    assert adapted_module_names(pm) == set(TOY_TARGETS)


def test_bad_states_and_names_raise():
    base = toy()
    cfg = {"r": 4, "alpha": 4.0}
    states = random_states("lora", cfg, base, TOY_TARGETS, torch.float32)
    with pytest.raises(ValueError, match="maps to"):  # A given transposed
        build_peft_model(base, "lora", cfg, TOY_TARGETS,
                         {**states, "up_proj": {"A": states["up_proj"]["A"].t(), "B": states["up_proj"]["B"]}})
    with pytest.raises(ValueError, match="missing keys"):
        build_peft_model(base, "lora", cfg, TOY_TARGETS, {**states, "up_proj": {"A": states["up_proj"]["A"]}})
    with pytest.raises(ValueError, match="unknown keys"):
        build_peft_model(base, "lora", cfg, TOY_TARGETS, {**states, "up_proj": {**states["up_proj"], "m": None}})
    with pytest.raises(KeyError):
        build_peft_model(base, "lora", cfg, ["nope"], {"nope": states["up_proj"]})
    with pytest.raises(BridgeUnsupported, match="antipasto"):
        build_peft_model(base, "antipasto", cfg, TOY_TARGETS, states)
    with pytest.raises(ValueError, match="empty"):
        build_peft_model(base, "lora", cfg, [], {})


def test_hra_transpose_is_not_a_silent_reshape():
    """hra u (r, d_in) -> hra_u (d_in, r) is a transpose: column i of peft's tensor is u_i."""
    base = toy(torch.float64)
    cfg = {"r": 4, "dtype": None}
    states = random_states("hra", cfg, base, TOY_TARGETS, torch.float64)
    pm = build_peft_model(base, "hra", cfg, TOY_TARGETS, states)
    hu = peft_layer(pm, "up_proj").hra_u["default"]
    assert hu.shape == (12, 4)
    assert torch.equal(hu[:, 1], states["up_proj"]["u"][1])


def test_references_do_not_import_variants():
    code = ("import sys, references.peft_bridge; "
            "bad = [m for m in sys.modules if m == 'variants' or m.startswith('variants.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
    src = "\n".join(p.read_text() for p in (REPO / "references" / "peft_bridge").glob("*.py"))
    assert "import variants" not in src and "from variants" not in src
