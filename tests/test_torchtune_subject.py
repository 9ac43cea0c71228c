"""The built-in ``--subject torchtune`` (audit/subjects/torchtune.py): torchtune's LoRALinear / DoRALinear.

Each declared torchtune departure is reproduced here DIRECTLY against torchtune (a standalone module, the
paper's formula computed by hand in float64), so no finding is an audit artefact; the subject's own parts
(attach, Conv1D, dtypes, checkpoints, merge, refusals) are checked on tiny models; one end-to-end audit runs
through ``audit.cli.main``. Skipped when torchtune (the ``torchtune`` extra) is not installed.
"""
from __future__ import annotations

import json

import pytest
import torch


_subject = pytest.importorskip("audit.subjects.torchtune", exc_type=ImportError,
                               reason="torchtune is not installed (pip install 'adapter-audit[torchtune]')")
tt = _subject._import_torchtune()  # torchtune's peft modules, torchao's import noise silenced

from audit import models  # noqa: E402
from audit.roles import resolve_targets  # noqa: E402
from audit.subjects import NotSupported, from_spec  # noqa: E402
from audit.subjects.torchtune import DEVIATIONS, Torchtune  # noqa: E402

F64 = torch.float64
D_IN, D_OUT, R, ALPHA = 12, 9, 3, 6.0
S = ALPHA / R


def _module(cls, bias: bool = True, seed: int = 0, moved: bool = True):
    """A standalone torchtune module in float64 with a random base W, b and (``moved``) random A, B, m off their
    init (as after training: m ≠ ‖W + sBA‖_row), and its state as plain float64 tensors."""
    g = torch.Generator().manual_seed(seed)
    with _default(F64):
        mod = cls(D_IN, D_OUT, rank=R, alpha=ALPHA, use_bias=bias)
    with torch.no_grad():
        mod.weight.copy_(torch.randn(D_OUT, D_IN, generator=g, dtype=F64))
        if bias:
            mod.bias.copy_(torch.randn(D_OUT, generator=g, dtype=F64))
        if hasattr(mod, "initialize_dora_magnitude"):
            mod.initialize_dora_magnitude()
        if moved:
            mod.lora_a.weight.copy_(torch.randn(R, D_IN, generator=g, dtype=F64) * 0.3)
            mod.lora_b.weight.copy_(torch.randn(D_OUT, R, generator=g, dtype=F64) * 0.3)
            if hasattr(mod, "magnitude"):
                mod.magnitude.mul_(1 + 0.3 * torch.randn(D_OUT, generator=g, dtype=F64))
    mod.eval()
    st = {"W": mod.weight.detach().clone(), "b": None if mod.bias is None else mod.bias.detach().clone(),
          "A": mod.lora_a.weight.detach().clone(), "B": mod.lora_b.weight.detach().clone()}
    if hasattr(mod, "magnitude"):
        st["m"] = mod.magnitude.detach().clone()
    return mod, st


class _default:
    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.old = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.old)


def _paper_dora(st: dict, detach: bool = True):
    """The paper's DoRA layer (arXiv 2402.09353 §4.1 eq. 5), by hand: (W′, b) with W′ = m ⊙ V / ‖V‖_row,
    V = W + s·B A; the bias is not scaled. ``detach``: the norm a constant for gradients (§4.3)."""
    V = st["W"] + S * st["B"] @ st["A"]
    n = torch.linalg.vector_norm(V, dim=1)
    n = n.detach() if detach else n
    return (st["m"] / n).unsqueeze(1) * V, st["b"]


def _x(seed: int = 1, n: int = 7):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


# -- the paper where torchtune follows it --------------------------------------------------------------

def test_lora_is_the_papers_formula_and_merge():
    """LoRALinear: h = W x + b + (α/r) B A x, and get_merged_lora_ckpt writes W + (α/r) B A (bias untouched),
    both to float64 rounding: LoRA has no torchtune finding."""
    mod, st = _module(tt.LoRALinear)
    x = _x()
    paper = x @ (st["W"] + S * st["B"] @ st["A"]).T + st["b"]
    assert _rel(mod(x).detach(), paper) < 1e-13
    merged = tt.get_merged_lora_ckpt({f"layer.{k}": v.clone() for k, v in mod.state_dict().items()}, rank=R, alpha=ALPHA)
    assert set(merged) == {"layer.weight", "layer.bias"}
    assert _rel(merged["layer.weight"], st["W"] + S * st["B"] @ st["A"]) < 1e-14
    assert torch.equal(merged["layer.bias"], st["b"])


def test_dora_norm_is_detached_an_open_choice_not_a_finding():
    """DoRALinear's A and B gradients are the paper's with the norm a constant in backprop (§4.3, dora.py:183-184),
    not eq. 5's through the norm: the open choice the dora card accepts. Without a bias its outputs and its m
    gradient are the paper's too."""
    mod, st = _module(tt.DoRALinear, bias=False)
    x = _x()
    t = torch.randn(x.shape[0], D_OUT, generator=torch.Generator().manual_seed(5), dtype=F64)
    (mod(x) * t).sum().backward()
    for detach, close in ((True, True), (False, False)):
        A, B, m = (st[k].clone().requires_grad_(True) for k in ("A", "B", "m"))
        W, b = _paper_dora({**st, "A": A, "B": B, "m": m}, detach=detach)
        y = x @ W.T
        (y * t).sum().backward()
        errs = [_rel(mod.lora_a.weight.grad, A.grad), _rel(mod.lora_b.weight.grad, B.grad)]
        assert all(e < 1e-12 for e in errs) if close else all(e > 1e-2 for e in errs), (detach, errs)
        assert _rel(mod.magnitude.grad, m.grad) < 1e-12
        assert _rel(mod(x).detach(), y.detach()) < 1e-13


# -- torchtune's findings (DEVIATIONS in audit/subjects/torchtune.py), each reproduced on torchtune --------

def _ids(method: str) -> set[str]:
    return {d.id for d in DEVIATIONS[method]}


def test_dora_scales_the_bias():
    """torchtune-dora-bias-scaled: DoRALinear computes r ⊙ (W x + s B A x + b), r = m / ‖W + s B A‖_row
    (dora.py:168, 185-191); the paper W′x + b. The difference is exactly (r − 1) ⊙ b, and within the declared
    magnitude here."""
    assert {"torchtune-dora-bias-scaled", "torchtune-dora-bias-scaled-vs-peft"} <= _ids("dora")
    mod, st = _module(tt.DoRALinear)
    x = _x()
    W_paper, b = _paper_dora(st)
    paper = x @ W_paper.T + b
    got = mod(x).detach()
    V = st["W"] + S * st["B"] @ st["A"]
    r = st["m"] / torch.linalg.vector_norm(V, dim=1)
    assert _rel(got, r * (x @ V.T + b)) < 1e-13             # torchtune's own formula
    assert _rel(got - paper, ((r - 1) * b).expand_as(got)) < 1e-10  # off by (r - 1) b exactly
    assert _rel(got, paper) > 1e-2                           # a departure of O(|r − 1|), far above float64 rounding
    # at init (m = ‖W‖_row, B = 0: r = 1) the bias scaling is invisible: the output is the base layer's
    fresh, st0 = _module(tt.DoRALinear, moved=False)
    assert _rel(fresh(x).detach(), x @ st0["W"].T + st0["b"]) < 1e-14


def test_dora_magnitude_gradient_carries_the_bias():
    """torchtune-dora-bias-in-magnitude-gradient (and its bf16 consequence, an m gradient that can round to
    exactly 0): ∂L/∂m = Σ g ⊙ (V x + b) / ‖V‖_row in torchtune, Σ g ⊙ V x / ‖V‖_row in the paper. A loss
    whose g makes torchtune's sum vanish exactly leaves the paper's non-zero."""
    assert {"torchtune-dora-bias-in-magnitude-gradient",
            "torchtune-dora-bias-in-magnitude-gradient-bf16-zero"} <= _ids("dora")
    mod, st = _module(tt.DoRALinear)
    x = _x(n=2)
    V = st["W"] + S * st["B"] @ st["A"]
    n = torch.linalg.vector_norm(V, dim=1)
    u = x @ V.T + st["b"]                                   # what torchtune's m multiplies, per token
    t = torch.stack([u[1], -u[0]])                          # Σ_tokens t ⊙ u = 0 exactly, row by row
    (mod(x) * t).sum().backward()
    assert float(mod.magnitude.grad.abs().max()) < 1e-12
    paper_grad = (t * (x @ V.T)).sum(0) / n                 # = b ⊙ (u0 − u1) / n: non-zero
    expected = st["b"] * (u[0] - u[1]) / n
    assert _rel(paper_grad, expected) < 1e-12 and float(expected.abs().max()) > 1e-1


def test_dora_merged_checkpoint_is_the_paper_not_torchtunes_forward():
    """torchtune-dora-merge-bias-unscaled: get_merged_lora_ckpt writes the paper's W′ and keeps b unscaled
    (_utils.py:186-196), so the merged layer is the paper's and not torchtune's own biased forward."""
    assert "torchtune-dora-merge-bias-unscaled" in _ids("dora")
    mod, st = _module(tt.DoRALinear)
    merged = tt.get_merged_lora_ckpt({f"layer.{k}": v.clone() for k, v in mod.state_dict().items()}, rank=R, alpha=ALPHA)
    W_paper, b = _paper_dora(st)
    assert _rel(merged["layer.weight"], W_paper) < 1e-13 and torch.equal(merged["layer.bias"], b)
    x = _x()
    merged_out = x @ merged["layer.weight"].T + merged["layer.bias"]
    assert _rel(merged_out, x @ W_paper.T + b) < 1e-13
    assert _rel(merged_out, mod(x).detach()) > 1e-3
    # without a bias the merged checkpoint reproduces the module
    nob, _ = _module(tt.DoRALinear, bias=False)
    m2 = tt.get_merged_lora_ckpt({f"layer.{k}": v.clone() for k, v in nob.state_dict().items()}, rank=R, alpha=ALPHA)
    assert _rel(x @ m2["layer.weight"].T, nob(x).detach()) < 1e-13


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_rank_is_not_validated():
    """torchtune-rank-unvalidated: rank 0 builds a LoRALinear (ZeroDivisionError at its first forward) and raises
    ZeroDivisionError in DoRALinear's constructor; a string rank raises a TypeError that names neither the rank
    nor its value."""
    assert "torchtune-rank-unvalidated" in _ids("lora") and "torchtune-rank-unvalidated" in _ids("dora")
    lora = tt.LoRALinear(6, 5, rank=0, alpha=8.0)
    with pytest.raises(ZeroDivisionError):
        lora(torch.randn(2, 6))
    with pytest.raises(ZeroDivisionError):
        tt.DoRALinear(6, 5, rank=0, alpha=8.0)
    for cls in (tt.LoRALinear, tt.DoRALinear):
        with pytest.raises(TypeError) as e:
            cls(6, 5, rank="4", alpha=8.0)
        assert "rank" not in str(e.value) and "'4'" not in str(e.value)


def test_an_unknown_option_is_taken_for_a_quantization_argument():
    """torchtune-unknown-option-as-quantization-kwarg: an unknown keyword lands in **quantization_kwargs: a
    ValueError when its value is truthy, silently accepted when it is falsy (lora.py:57-71)."""
    assert "torchtune-unknown-option-as-quantization-kwarg" in _ids("lora")
    for cls in (tt.LoRALinear, tt.DoRALinear):
        with pytest.raises(ValueError, match="quantize_base"):
            cls(6, 5, rank=2, alpha=4.0, bogus_field=1)
        cls(6, 5, rank=2, alpha=4.0, bogus_field=0)  # accepted: no error at all


# -- the subject's own parts ----------------------------------------------------------------------------

def _subject():
    subject = from_spec("torchtune")
    assert isinstance(subject, Torchtune) and subject.kind == "torchtune"
    return subject


def _cfg(**kw):
    return {"r": 4, "alpha": 8.0, "dtype": "float32", "seed": 0, "use_rslora": False, "target_names": [],
            "target_roles": None, "exclude_names": [], "layers": None, **kw}


def _attach(name: str, method: str, dtype=torch.float32, **kw):
    subject = _subject()
    model = models.build(name, seed=0).to(dtype).eval()
    cfg = _cfg(**kw)
    targets = resolve_targets(model, cfg)
    return subject, subject.attach(model, method, cfg, None, targets=targets), targets


def test_attach_replaces_exactly_the_targets_torchtunes_way():
    """GPT-2: every target (Conv1D, weight transposed in) becomes a torchtune module with the base weight and
    bias; DoRA's magnitude is ‖W‖_row; only the adapter parameters are trainable; the adapted model computes the
    base model's logits at init."""
    subject, model, targets = _attach("gpt2", "dora")
    base = models.build("gpt2", seed=0).eval()
    layers = subject.adapted_layers(model)
    assert set(layers) == set(targets) and all(isinstance(m, tt.DoRALinear) for m in layers.values())
    for name, mod in layers.items():
        old = base.get_submodule(name)
        assert targets[name].kind == "Conv1D" and torch.equal(mod.weight, old.weight.t())
        assert torch.equal(mod.bias, old.bias) and subject.base_layer(mod) is mod
        assert torch.allclose(mod.magnitude, mod.weight.norm(dim=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(tt.get_adapter_params(model))
    ids = models.example_inputs(base)
    assert torch.equal(models.logits(model, ids), models.logits(base, ids))


def test_adapters_take_the_base_dtype():
    """torchtune keeps adapters in the base weight's dtype (no adapter-dtype option): bf16 on a bf16 model."""
    subject, model, _ = _attach("mlp", "dora", dtype=torch.bfloat16)
    for mod in subject.adapted_layers(model).values():
        assert {mod.lora_a.weight.dtype, mod.lora_b.weight.dtype, mod.magnitude.dtype} == {torch.bfloat16}
    assert "dtype" in Torchtune.unsupported and "use_rslora" in Torchtune.unsupported


def test_refusals():
    """Attaching twice is refused; rsLoRA is not supported (torchtune has no option); no matching target is a
    ValueError naming target_names; a refusal leaves the model untouched."""
    subject, model, targets = _attach("mlp", "lora")
    with pytest.raises(RuntimeError, match="already"):
        subject.attach(model, "lora", _cfg(), None, targets=targets)
    fresh = models.build("mlp", seed=0)
    before = [(n, type(m)) for n, m in fresh.named_modules()]
    with pytest.raises(NotSupported, match="use_rslora"):
        subject.attach(fresh, "lora", _cfg(use_rslora=True), None, targets=resolve_targets(fresh, _cfg()))
    with pytest.raises(ValueError, match="target_names"):
        subject.attach(fresh, "lora", _cfg(target_names=["^nope$"]), None, targets={})
    with pytest.raises(ValueError, match="quantize_base"):
        subject.attach(fresh, "lora", _cfg(bogus_field=1), None, targets=resolve_targets(fresh, _cfg()))
    assert [(n, type(m)) for n, m in fresh.named_modules()] == before


def test_checkpoint_round_trip_and_torchtunes_key_validation(tmp_path):
    """save writes torchtune's adapter state dict (its own key names) and adapter_config.json; load rebuilds the
    adapters on a fresh base and loads with torchtune's validation: identical logits, and a checkpoint with a
    missing or an extra key is refused by validate_missing_and_unexpected_for_lora."""
    from safetensors.torch import load_file, save_file
    subject, model, _ = _attach("qwen2", "dora")
    with torch.no_grad():
        for mod in subject.adapted_layers(model).values():
            mod.lora_b.weight.normal_(0, 0.1)
            mod.magnitude.mul_(1.1)
    file = subject.save(model, str(tmp_path / "ck"))
    keys = set(load_file(file))
    assert keys == set(tt.get_adapter_params(model))
    assert json.loads((tmp_path / "ck" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    loaded = subject.load(models.build("qwen2", seed=0).eval(), str(tmp_path / "ck"), "dora", _cfg())
    ids = models.example_inputs(loaded)
    assert torch.equal(models.logits(loaded, ids), models.logits(model, ids))
    tensors = load_file(file)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, file)
    with pytest.raises(AssertionError, match="Missing LoRA key"):
        subject.load(models.build("qwen2", seed=0).eval(), str(tmp_path / "ck"), "dora", _cfg())
    save_file({**tensors, "stray.lora_a.weight": torch.zeros(1)}, file)
    with pytest.raises(AssertionError, match="Unexpected key"):
        subject.load(models.build("qwen2", seed=0).eval(), str(tmp_path / "ck"), "dora", _cfg())


def test_merge_is_a_state_dict_of_the_base_model():
    """get_merged_lora_ckpt through the subject on GPT-2: the base model's names and layouts (Conv1D weights
    transposed back), loadable strict into a fresh base, computing the adapted LoRA model's logits."""
    subject, model, _ = _attach("gpt2", "lora")
    with torch.no_grad():
        for mod in subject.adapted_layers(model).values():
            mod.lora_b.weight.normal_(0, 0.1)
    merged = subject.merge(model)
    base = models.build("gpt2", seed=0).eval()
    base.load_state_dict(merged, strict=True)
    ids = models.example_inputs(base)
    assert _rel(models.logits(base, ids).double(), models.logits(model, ids).double()) < 1e-5


# -- end to end ------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_audit_end_to_end(tmp_path):
    """``python -m audit run --subject torchtune`` on the toy MLP (biased) in float32: no error row; LoRA partial
    (only the declared input-validation findings); DoRA's bias findings declared and observed (xfail). DoRA is
    partial where the audit reads its norm-gradient choice as torchtune's own (detached); where it reads
    "through" (audit/choices.py's nearest() ties when the bias departure dominates both options' distance), the
    only undeclared failures are paper_parity's A and B gradients judged under that wrong option."""
    from audit.cli import main
    out = tmp_path / "out"
    code = main(["run", "--subject", "torchtune", "--out", str(out), "--variants", "lora,dora", "--models", "mlp",
                 "--dtypes", "float32", "--jobs", "1", "--quiet"])
    res = json.loads((out / "results.json").read_text())
    rows = [r for r in res["rows"] if r.get("about", "subject") == "subject"]
    assert not [r for r in rows if r["status"] in ("error", "xpass")], [r for r in rows if r["status"] == "error"]
    verdicts = {v: d["verdict"] for v, d in res["verdicts"].items()}
    assert verdicts["lora"] == "partial"
    assert {r["deviation"] for r in rows if r["variant"] == "lora" and r["status"] == "xfail"} == {
        "torchtune-rank-unvalidated", "torchtune-unknown-option-as-quantization-kwarg"}
    assert not [r for r in rows if r["variant"] == "lora" and r["status"] == "fail"]
    observed = {r["deviation"] for r in rows if r["variant"] == "dora" and r["status"] == "xfail"}
    assert {"torchtune-dora-bias-scaled", "torchtune-dora-bias-in-magnitude-gradient",
            "torchtune-dora-bias-scaled-vs-peft", "torchtune-dora-merge-bias-unscaled"} <= observed
    fails = [r for r in rows if r["variant"] == "dora" and r["status"] == "fail"]
    if any("norm_gradient=through" in r["choice"] for r in rows if r["variant"] == "dora"):
        assert fails and {(r["check"], r["metric"]) for r in fails} <= {
            ("paper_parity", "grad_rel_err[A]"), ("paper_parity", "grad_rel_err[B]")}
        assert verdicts["dora"] == "non-conformant" and code == 1
    else:
        assert not fails and verdicts["dora"] == "partial" and code == 0
    # the corner torchtune has no option for is n/a with the reason, not a failure
    rs = [r for r in rows if r["config"] == "rslora"]
    assert rs and all(r["status"] == "n/a" for r in rs) and any("use_rslora" in r["message"] for r in rs)
