"""The audit does not cry wolf: correct implementations written differently from ours pass it.

``tests/alternatives/`` holds independent, correct implementations of some variants (one per file,
each a ``variants.Variant`` subclass usable as ``python -m audit run --impl FILE.py:Class --card C``).
They differ from ours only by random draws, rounding order or free choices. An audit that flags a
correct implementation is as useless as one that misses a bug: this file is the first half of that
proof, the mutant corpus (tests/test_mutants.py) the second.

Three layers of evidence:

1. **They are correct.** In float64 (model and adapter), with our adapter's perturbed state copied
   into them, every adapted layer's output and gradients (input and adapter tensors), the logits and
   the model-level adapter gradients equal ours to 1e-12 relative (``test_float64_equals_ours``;
   measured ≤ 3e-14): what the audit says about them in float32/bfloat16 is about rounding, draws and
   free choices, never about the formula.
2. **They really differ.** Their inits draw other numbers or signs than ours from the same
   distribution, or reach the same factors another way (``test_init_draws_differ_*``,
   ``test_eva_signs_*``, ``test_hra_pairs_*``, ``test_pissa_eigh_*``).
3. **The audit passes them** (``test_audit_passes``): every check but timing (timing cannot tell a
   bug from noise), both dtypes, verdict conformant or partial (only declared deviations fail), at
   seeds 0..4. Our own registry classes go through the same ``--impl`` path (MODULE:CLASS) at the same
   seeds, so a failure shared with ours is the audit's, one only the alternative has is a question.

Cost and coverage (2 shared cores, after the numerics-derived tolerances): one implementation × one
seed on all six zoo models × both dtypes takes ~20-30 s, so the full matrix (15 implementations × 5
seeds × 6 models) is ~30 min. Here each seed audits one or two models, both dtypes (``ROTATION``:
qwen2 at seed 0, then qwen3, gpt2 (Conv1D: the alternatives read the transposed weight their own way,
tests/alternatives/_dense.py), phi3 (fused projections), llama with the toy MLP; a decoder costs ~4 s
per implementation, the toy MLP ~1 s), so every model × dtype is audited and every seed runs.
Seeds 1-4 are marked slow (``nox -s tests`` runs them; ``-m "not slow"`` keeps seed 0).
``ADAPTER_AUDIT_ALL_MODELS=1`` audits every zoo model at every seed.

Float64 adapters: DoRA's magnitude m and DeLoRA's w_norm used to be computed in float32 whatever the
adapter dtype; ``test_float64_norms_are_float64`` guards the fix.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import variants
from audit import models, runner, verdict
from audit.cards import get as get_card
from audit.cell import rel_err
from audit.cli import load_impl
from audit.mutants import CHECKS
from audit.state import perturb

FOLDER = Path(__file__).resolve().parent / "alternatives"
ZOO = tuple(models.ZOO)  # qwen3, qwen2, llama, mlp, gpt2, phi3
DTYPES = ("float32", "bfloat16")
SEEDS = range(5)
BAD = ("fail", "error", "xpass")
F64_TOL = 1e-12
ALL_MODELS = os.environ.get("ADAPTER_AUDIT_ALL_MODELS") == "1"
# seed -> models: a decoder costs ~4 s per implementation (both dtypes), the toy MLP ~1 s
ROTATION = (("qwen2",), ("qwen3",), ("gpt2",), ("phi3",), ("llama", "mlp"))


@dataclass(frozen=True)
class Alt:
    file: str
    cls: str
    card: str
    # the open choices (audit/cards: choices) it takes where ours takes another: the audit must accept
    # them and report them; with an equation choice its float64 outputs or gradients are the paper
    # formula's under that option, not ours
    choice: tuple[tuple[str, str], ...] = ()
    # another layout the method allows (LoKr's factorisation): its state cannot be copied into ours, so it
    # is compared with the paper formula on its own state instead
    own_layout: bool = False

    @property
    def equation_choice(self) -> dict[str, str]:
        card = get_card(self.card)
        kinds = {c.name: c.resolved_by for c in card.choices}
        return {k: v for k, v in self.choice if kinds[k] == "equation"}

    @property
    def spec(self) -> str:
        return f"{FOLDER / self.file}:{self.cls}"

    def load(self) -> type[variants.Variant]:
        return load_impl(self.spec)


ALTERNATIVES = (
    Alt("lora_torch_init.py", "LoraTorchInit", "lora"),
    Alt("lora_fp32_delta.py", "LoraFp32Delta", "lora"),
    Alt("dora_explicit.py", "DoraExplicit", "dora"),
    Alt("eva_flipped_signs.py", "EvaFlippedSigns", "eva"),
    Alt("delora_round_once.py", "DeloraRoundOnce", "delora"),
    Alt("hra_explicit.py", "HraExplicit", "hra"),
    Alt("pissa_eigh.py", "PissaEigh", "pissa"),
    Alt("ia3_merged.py", "Ia3Merged", "ia3"),
    # the choices the papers leave open, taken the other way from ours
    Alt("lora_paper_gaussian.py", "LoraPaperGaussian", "lora", (("A_draw", "gaussian"),)),
    Alt("dora_through_norm.py", "DoraThroughNorm", "dora", (("norm_gradient", "through"),)),
    Alt("loha_lycoris_init.py", "LohaLycorisInit", "loha", (("zero_factor", "w2_a"), ("factor_draw", "gaussian"))),
    Alt("lokr_other_order.py", "LokrOtherOrder", "lokr", (("kron_order", "w2w1"),)),
    Alt("lokr_other_factorisation.py", "LokrOtherFactorisation", "lokr", own_layout=True),
)
OURS = {"lora": "variants.lora:Lora", "dora": "variants.dora:Dora", "eva": "variants.eva:Eva",
        "delora": "variants.delora:Delora", "hra": "variants.hra:Hra", "pissa": "variants.pissa:Pissa",
        "ia3": "variants.ia3:Ia3", "loha": "variants.loha:Loha", "lokr": "variants.lokr:Lokr"}


def models_for_seed(seed: int) -> tuple[str, ...]:
    """The zoo models of one seed, both dtypes: ROTATION[seed] (every model once; qwen2, biased and
    non-square, at the default seed 0). ADAPTER_AUDIT_ALL_MODELS=1: every zoo model at every seed."""
    return ZOO if ALL_MODELS else ROTATION[seed]


def test_rotation_covers_every_model():
    assert len(ROTATION) == len(SEEDS) and sorted(m for ms in ROTATION for m in ms) == sorted(ZOO)
    assert models_for_seed(0) == (ZOO if ALL_MODELS else ("qwen2",))


def test_every_alternative_file_is_listed_and_loads_through_impl():
    files = sorted(p.name for p in FOLDER.glob("*.py") if not p.name.startswith("_"))
    assert files == sorted(a.file for a in ALTERNATIVES)
    for a in ALTERNATIVES:
        cls = a.load()
        assert issubclass(cls, variants.Variant) and cls.Config is variants.REGISTRY[a.card].Config
        # written from scratch: neither the forward nor the init is inherited from our variant
        for method in ("init", "forward_input" if cls.hook == "input" else "forward"):
            assert getattr(cls, method) is not getattr(variants.REGISTRY[a.card], method), (a.file, method)
    for card, spec in OURS.items():
        assert load_impl(spec) is variants.REGISTRY[card]


# -- 1. correct: float64 equality with ours ---------------------------------------------------------

# extra configs per card; alpha=5 gives s = 1.25, a scale whose products round (alpha/r = 2 is exact)
EXTRA = {"lora": ({"alpha": 5.0}, {"use_rslora": True, "alpha": 5.0}), "dora": ({"alpha": 5.0},),
         "eva": ({"alpha": 5.0},), "delora": ({"init_style": "peft"}, {"lambda0": 3.0}), "hra": ({"r": 6},),
         "pissa": ({"alpha": 5.0},), "ia3": (), "loha": ({"alpha": 5.0},), "lokr": ({"decompose_both": True},)}
F64_CASES = [(a, over, arch) for a in ALTERNATIVES for over in ({}, *EXTRA[a.card]) for arch in ("qwen2", "mlp")
             if not a.equation_choice and not a.own_layout]
CHOICE_CASES = [(a, over, arch) for a in ALTERNATIVES for over in ({}, *EXTRA[a.card]) for arch in ("qwen2", "gpt2")
                if a.equation_choice or a.own_layout]


def _calibration(model):
    return [models.example_inputs(model, batch=4, seed=100 + i) for i in range(2)]


def _attach(model, impl, card: str, over: dict, dtype: str = "float64", arch: str = "qwen2"):
    c = get_card(card)
    cfg = variants.config(card, **{**c.config, **c.model_overrides.get(arch, {}), **over, "dtype": dtype, "seed": 0})
    cal = _calibration(model) if impl.needs_calibration else None
    return variants.attach(model, cfg, calibration_data=cal, variant=impl)


@pytest.mark.parametrize("alt,over,arch", F64_CASES,
                         ids=[f"{a.file[:-3]}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'card'}-{m}"
                              for a, o, m in F64_CASES])
def test_float64_equals_ours(alt, over, arch):
    """Same (perturbed, non-trivial) state in float64: logits and all adapter gradients agree to 1e-12."""
    err = float64_errors(alt, over, arch)
    assert max(err.values()) <= F64_TOL, err


def float64_errors(alt: Alt, over: dict, arch: str) -> dict[str, float]:
    """Rel errs of the alternative vs ours at the same perturbed float64 state, worst layer/tensor:
    ``layer`` and ``layer_grad[k]`` (each adapted layer fed the same random float64 input; k = the
    input x or an adapter tensor), ``logits`` and ``grad[k]`` (the whole model). The layer-level
    rows matter most: the Qwen decoders' RMSNorm computes in float32 even in a float64 model."""
    base = models.build(arch, seed=0, dtype=torch.float64)
    ours = _attach(copy.deepcopy(base), variants.REGISTRY[alt.card], alt.card, over, arch=arch)
    theirs = _attach(copy.deepcopy(base), alt.load(), alt.card, over, arch=arch)
    perturb(ours, 0, get_card(alt.card).perturb)
    t_ours, t_theirs = variants.state_of(ours).targets, variants.state_of(theirs).targets
    assert list(t_ours) == list(t_theirs)
    with torch.no_grad():
        for name in t_ours:
            a, b = variants.adapter_tensors(t_ours[name]), variants.adapter_tensors(t_theirs[name])
            assert {k: (v.shape, v.dtype, v.requires_grad) for k, v in a.items()} == \
                   {k: (v.shape, v.dtype, v.requires_grad) for k, v in b.items()}, name
            for k in a:
                b[k].copy_(a[k])
    err: dict[str, float] = {}

    def worst(key: str, value: float) -> None:
        err[key] = max(err.get(key, 0.0), value)

    def trainable(mod) -> dict[str, torch.Tensor]:
        return {k: v for k, v in variants.adapter_tensors(mod).items() if v.requires_grad}

    g = torch.Generator().manual_seed(1)
    for name, mod in t_ours.items():
        x = torch.randn(2, 5, mod.in_features, generator=g, dtype=torch.float64)
        t = torch.randn(2, 5, mod.out_features, generator=g, dtype=torch.float64)
        grads = []
        for m in (mod, t_theirs[name]):
            xi = x.clone().requires_grad_(True)
            y = m(xi)
            params = trainable(m)
            grads.append((y, torch.autograd.grad((y * t).sum(), [xi, *params.values()]), list(params)))
        (y_o, g_o, keys), (y_t, g_t, _) = grads
        worst("layer", rel_err(y_t, y_o))
        for k, go, gt in zip(["x", *keys], g_o, g_t):
            worst(f"layer_grad[{k}]", rel_err(gt, go))

    ids = models.example_inputs(base, seed=0)
    y_ours, y_theirs = models.logits(ours, ids), models.logits(theirs, ids)
    assert y_ours.dtype == torch.float64
    assert rel_err(y_ours, models.logits(base, ids)) > 1e-3, "the state is trivial: nothing is compared"
    worst("logits", rel_err(y_theirs, y_ours))
    t = torch.randn(y_ours.shape, generator=g, dtype=torch.float64)
    (y_ours * t).sum().backward()
    (y_theirs * t).sum().backward()
    for name in t_ours:
        theirs_params = trainable(t_theirs[name])
        for k, p in trainable(t_ours[name]).items():
            assert p.grad is not None and theirs_params[k].grad is not None, (name, k)
            worst(f"grad[{k}]", rel_err(theirs_params[k].grad, p.grad))
    return err


@pytest.mark.parametrize("alt,over,arch", CHOICE_CASES,
                         ids=[f"{a.file[:-3]}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'card'}-{m}"
                              for a, o, m in CHOICE_CASES])
def test_float64_equals_the_paper_under_its_choice(alt, over, arch):
    """An alternative taking another equation option than ours, or another layout: at a perturbed float64
    state every layer's output and gradients equal the paper formula's under its option (on its own
    state) to 1e-12; another option's formula is O(1) away, another layout is not the reference's rule
    (so it is a different computation, which the audit must accept)."""
    from audit import choices
    from audit.state import capture
    from audit.subjects import Adapted, as_subject
    base = models.build(arch, seed=0, dtype=torch.float64)
    impl = alt.load()
    model = _attach(copy.deepcopy(base), impl, alt.card, over, arch=arch)
    perturb(model, 0, get_card(alt.card).perturb)
    card = get_card(alt.card)
    cfg = {**dict(card.config, **card.model_overrides.get(arch, {}), **over), "dtype": "float64", "seed": 0}
    cfg = variants.config(alt.card, **cfg).to_dict(function_only=True)
    handle = Adapted(as_subject(impl), model, alt.card, cfg)
    with torch.no_grad():
        seen, _ = capture(handle.layers, lambda: models.logits(model, models.example_inputs(base, seed=0)))
    mine = {c.name: c.option(alt.equation_choice[c.name]) for c in card.choices if c.name in alt.equation_choice}
    theirs = choices.made_by(card, "ours")
    assert choices.distance(handle, {**cfg, **choices.fields(tuple(mine.items()))}, seen, 0) <= F64_TOL
    if mine:
        assert choices.distance(handle, {**cfg, **choices.fields(theirs)}, seen, 0) > 1e-3
    if alt.own_layout:
        from audit.twins import _same_layout
        from references.peft_bridge import BridgeUnsupported
        with pytest.raises(BridgeUnsupported, match="another of the"):
            _same_layout(handle)


# -- 2. they really differ from ours ----------------------------------------------------------------

def _fresh_pair(alt: Alt, arch: str = "qwen2", dtype: str = "float32"):
    base = models.build(arch, seed=0)
    ours = _attach(copy.deepcopy(base), variants.REGISTRY[alt.card], alt.card, {}, dtype)
    theirs = _attach(copy.deepcopy(base), alt.load(), alt.card, {}, dtype)
    return variants.state_of(ours).targets, variants.state_of(theirs).targets


@pytest.mark.parametrize("alt", [a for a in ALTERNATIVES if a.card in ("lora", "dora", "delora")
                                 and ("A_draw", "gaussian") not in a.choice], ids=lambda a: a.file[:-3])
def test_init_draws_differ_from_ours_same_distribution(alt):
    """A is U(±1/√d_in) (kaiming_uniform, a = √5) in both, but other draws; B = 0 (LoRA, DoRA)."""
    ours, theirs = _fresh_pair(alt)
    pooled = []
    for name, mod in theirs.items():
        a_ours, a_theirs = ours[name].adapter_A.detach(), mod.adapter_A.detach()
        bound = 1 / mod.in_features ** 0.5
        assert float(a_theirs.abs().max()) <= bound and not torch.equal(a_ours, a_theirs), name
        pooled.append((a_theirs / bound).flatten())
        if alt.card != "delora":
            assert not mod.adapter_B.detach().any()
    u = torch.cat(pooled).double()  # U(-1, 1): mean 0, variance 1/3
    assert abs(float(u.mean())) < 0.05 and abs(float(u.var()) - 1 / 3) < 0.03


def test_eva_signs_differ_row_space_equal():
    """EVA's principal directions: same rows up to sign (|A_theirs A_oursᵀ| = I), some signs flipped."""
    alt = next(a for a in ALTERNATIVES if a.card == "eva")
    ours, theirs = _fresh_pair(alt, dtype="float64")
    flipped = 0
    for name, mod in theirs.items():
        cross = mod.adapter_A @ ours[name].adapter_A.t()
        assert torch.allclose(cross.abs(), torch.eye(cross.shape[0], dtype=cross.dtype), atol=1e-8), name
        flipped += int((cross.diagonal() < 0).sum())
    total = sum(m.adapter_rank for m in theirs.values())
    assert 0 < flipped < total, (flipped, total)


def test_hra_pairs_duplicated_draws_differ():
    """HRA's symmetric init in both: u_{2k} = u_{2k+1} ~ U(±1/√(r/2)), other draws than ours."""
    alt = next(a for a in ALTERNATIVES if a.card == "hra")
    ours, theirs = _fresh_pair(alt)
    for name, mod in theirs.items():
        u = mod.adapter_u.detach()
        assert torch.equal(u[0::2], u[1::2]) and float(u.abs().max()) <= 1 / (u.shape[0] // 2) ** 0.5, name
        assert not torch.equal(u, ours[name].adapter_u.detach()), name


def test_pissa_eigh_same_triplets_same_residual():
    """PiSSA via eigh of WᵀW: A's rows are ours up to sign (B's columns flip with them), s·BA and the
    residual W_res equal ours in float64."""
    alt = next(a for a in ALTERNATIVES if a.card == "pissa")
    base = models.build("qwen2", seed=0, dtype=torch.float64)
    ours = variants.state_of(_attach(copy.deepcopy(base), variants.REGISTRY["pissa"], "pissa", {})).targets
    theirs = variants.state_of(_attach(copy.deepcopy(base), alt.load(), "pissa", {})).targets
    for name, mod in theirs.items():
        a, b = mod.adapter_A.detach(), mod.adapter_B.detach()
        a0, b0 = ours[name].adapter_A.detach(), ours[name].adapter_B.detach()
        sign = torch.sign((a * a0).sum(dim=1))
        assert torch.allclose(a, a0 * sign[:, None], rtol=0, atol=1e-10), name
        assert torch.allclose(b, b0 * sign[None, :], rtol=0, atol=1e-10), name
        assert rel_err(mod.weight, ours[name].weight) <= F64_TOL, name


# -- the float64 adapter regression ----------------------------------------------------------------

@pytest.mark.parametrize("card,tensor,dim", [("dora", "m", 1), ("delora", "w_norm", 0)])
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.float64])
def test_float64_norms_are_float64(card, tensor, dim, model_dtype):
    """dtype="float64": DoRA's m = ‖W‖_row and DeLoRA's w_norm = ‖W‖_col to float64 precision (they
    were computed in float32 and cast, a 1e-7 error); float32 adapters keep the float32 norm."""
    base = models.build("qwen2", seed=0, dtype=model_dtype)
    for dtype, tol in (("float64", 1e-15), ("float32", 0.0)):
        model = _attach(copy.deepcopy(base), variants.REGISTRY[card], card, {}, dtype)
        for name, mod in variants.state_of(model).targets.items():
            got = getattr(mod, f"adapter_{tensor}").detach()
            assert got.dtype == getattr(torch, dtype)
            want = torch.linalg.vector_norm(mod.weight.double(), dim=dim)
            if dtype == "float32":
                want = mod.weight.float().norm(dim=dim)  # unchanged behaviour at float32
            err = float(((got.double() - want.double()).abs() / want.double()).max())
            assert err <= tol, (name, dtype, err)


# -- 3. the audit passes them -------------------------------------------------------------------------

TARGETS = [(a.spec, a.card, a.file[:-3]) for a in ALTERNATIVES] + [(s, c, f"ours-{c}") for c, s in OURS.items()]
AUDIT_CASES = [pytest.param(spec, card, seed, id=f"{label}-seed{seed}",
                            marks=[pytest.mark.slow] if seed else [])
               for spec, card, label in TARGETS for seed in SEEDS]


def _describe(r) -> str:
    val = "-" if r.value is None else f"{r.value:.3g}"
    tol = "-" if r.tolerance is None else f"{r.op} {r.tolerance:.3g}"
    return f"{r.check} {r.metric} [{r.model}/{r.dtype}] = {val} (needs {tol}): {r.status} {r.message[:120]}"


@pytest.mark.parametrize("spec,card,seed", AUDIT_CASES)
def test_audit_passes(spec, card, seed):
    impl = load_impl(spec)
    plan = runner.Plan([runner.Target(get_card(card), impl, spec)], list(models_for_seed(seed)), list(DTYPES),
                       list(CHECKS), seed=seed)
    rows = runner.run(plan, progress=False)
    assert {(r.model, r.dtype) for r in rows} >= {(m, d) for m in models_for_seed(seed) for d in DTYPES}
    v = verdict.verdicts(rows)[card]
    # the subject's own rows (rows "about" the reference, e.g. peft vs the paper, are findings
    # about peft and do not enter the verdict)
    bad = [_describe(r) for r in rows if r.status in BAD and getattr(r, "about", "subject") != "reference"]
    assert v["verdict"] in ("conformant", "partial"), \
        f"{spec} seed {seed}: {v['verdict']}, {len(bad)} failing row(s):\n  " + "\n  ".join(bad)
    alt = next((a for a in ALTERNATIVES if a.spec == spec), None)
    expected = dict(alt.choice) if alt else {}
    if expected:  # the audit says which option it took, on every row judged under the choice
        from audit.choices import parse
        made = [parse(r.choice) for r in rows if r.choice and r.about == "subject"]
        named = [m for m in made if set(expected) & set(m)]
        assert named and all(m[k] == v for m in named for k, v in expected.items() if k in m), (spec, made[:3])
