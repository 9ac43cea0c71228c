"""The built-in ``--subject lycoris`` (audit/subjects/lycoris.py) and every LyCORIS departure it declares.

Each finding is reproduced here against the LyCORIS library itself, without the audit: a tiny model,
LyCORIS's own API (``LycorisNetwork.apply_preset`` + ``create_lycoris`` / ``LycorisNetwork``,
``apply_to``, ``merge_to`` / ``onfly_merge``, ``save_weights`` / ``load_weights``), the paper's formula by
hand in float64, and the difference the deviation declares. So no declared finding is an artefact of
the audit or of the driver. One end-to-end test audits a small selection through the CLI.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

lycoris = pytest.importorskip(
    "lycoris", reason="LyCORIS is not installed (pip install 'adapter-audit[lycoris]', i.e. lycoris-lora)")

from lycoris import LycorisNetwork, create_lycoris  # noqa: E402

from audit.subjects import LayerNotSupported  # noqa: E402
from audit.subjects.lycoris import Lycoris  # noqa: E402
from audit.subjects.lycoris_findings import DEVIATIONS  # noqa: E402
from audit.subjects.transforms import PackedSkew  # noqa: E402

F64 = torch.float64


class Tiny(nn.Module):
    """Two biased non-square layers, like the zoo's toy MLP (48 → 80 → 48)."""

    def __init__(self, d: int = 48, hidden: int = 80):
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


@pytest.fixture(autouse=True)
def _lycoris_class_state():
    """apply_preset writes LycorisNetwork's class attributes: put them back for whoever runs next."""
    from audit.subjects.lycoris import PRESET_STATE
    saved = {k: getattr(LycorisNetwork, k) for k in PRESET_STATE}
    yield
    for k, v in saved.items():
        setattr(LycorisNetwork, k, v)


def tiny(seed: int = 0, **kw) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(**kw)


def lyco(model: nn.Module, algo: str, targets=("up", "down"), dim: int = 4, alpha: float = 8.0,
         ctor: bool = False, **kw):
    """LyCORIS's own attach, restricted to exactly ``targets`` (full names, fnmatch, class-level preset reset)."""
    LycorisNetwork.apply_preset({"enable_conv": True, "target_module": [], "target_name": list(targets),
                                 "module_algo_map": {}, "name_algo_map": {}, "use_fnmatch": True,
                                 "exclude_name": [], "lora_prefix": "lycoris"})
    if ctor:  # the constructor passes every option on to the modules (create_lycoris whitelists them)
        net = LycorisNetwork(model, multiplier=1.0, lora_dim=dim, alpha=alpha, network_module=algo, **kw)
    else:
        net = create_lycoris(model, 1.0, linear_dim=dim, linear_alpha=alpha, algo=algo, **kw)
    net.apply_to()
    return net.eval()


def modules(net) -> dict[str, nn.Module]:
    return {m.lora_name.removeprefix("lycoris_"): m for m in net.loras}


def randomize(net, std: float = 0.1, seed: int = 1) -> None:
    """Every adapter tensor away from its init (seeded)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def d64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(F64)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((d64(a) - d64(b)).norm() / d64(b).norm())


def cayley_blocks(b: torch.Tensor) -> torch.Tensor:
    """R_i = (I + Q_i)(I − Q_i)⁻¹, Q_i = B_i − B_iᵀ, in float64 (the paper's eq. 4 and LyCORIS's get_r)."""
    q = d64(b) - d64(b).transpose(-1, -2)
    eye = torch.eye(b.shape[-1], dtype=F64)
    return (eye + q) @ torch.linalg.inv(eye - q)


def deviation(method: str, dev_id: str):
    return next(d for d in DEVIATIONS[method] if d.id == dev_id)


# -- the subject ------------------------------------------------------------------------------------------

def _targets(model, names):
    from audit.roles import resolve_targets
    return {n: t for n, t in resolve_targets(model, {"target_names": [f"^{n}$" for n in names]}).items()}


def test_subject_adapts_exactly_the_targets_and_keeps_the_network_outside_the_model():
    subject, model = Lycoris(), tiny()
    x = torch.randn(3, 48)
    y0 = model(x)
    out = subject.attach(model, "lora", {"r": 4, "alpha": 8.0, "seed": 0}, None, targets=_targets(model, ["up"]))
    layers = subject.adapted_layers(out)
    assert list(layers) == ["up"] and subject.base_layer(layers["up"]) is model.up
    assert not any("lora" in n for n, _ in model.named_parameters())  # not a registered submodule
    params = subject.external_parameters(model)
    assert {p.shape for p in params} == {(4, 48), (80, 4)} and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for p in model.parameters())  # LyCORIS trains its network only
    assert torch.equal(model(x), y0)  # lora_up = 0
    with pytest.raises(RuntimeError, match="already attached"):
        subject.attach(model, "lora", {"r": 4, "alpha": 8.0, "seed": 0}, None, targets=_targets(model, ["up"]))
    with torch.no_grad():
        params[1].normal_()  # lora_up: the adapter acts
    assert not torch.equal(model(x), y0)
    subject.detach(model)  # LyCORIS's restore: the original forward back (as an instance attribute)
    assert model.up.forward.__func__ is nn.Linear.forward and torch.equal(model(x), y0)
    assert all(p.requires_grad for p in model.parameters()) and Lycoris.network(model) is None


def test_subject_presets_do_not_leak_between_attaches():
    """LycorisNetwork's preset is class-level state that create_lycoris does not reset: a second attach with
    other targets must adapt exactly those, and LyCORIS's defaults are back afterwards."""
    subject = Lycoris()
    a, b = tiny(), tiny()
    lyco(tiny(), "lora", targets=("up", "down"))  # a previous user's preset
    subject.attach(a, "loha", {"r": 2, "alpha": 4.0, "seed": 0}, None, targets=_targets(a, ["up"]))
    subject.attach(b, "loha", {"r": 2, "alpha": 4.0, "seed": 0}, None, targets=_targets(b, ["down"]))
    assert list(subject.adapted_layers(a)) == ["up"] and list(subject.adapted_layers(b)) == ["down"]
    assert LycorisNetwork.TARGET_REPLACE_NAME == ["up", "down"]  # the previous preset, untouched


def test_subject_refuses_gpt2_conv1d_and_options_lycoris_lacks():
    from audit import models
    from audit.subjects import NotSupported
    gpt2 = models.build("gpt2")
    from audit.roles import resolve_targets
    with pytest.raises(LayerNotSupported, match="Conv1D"):
        Lycoris().attach(gpt2, "lora", {"r": 4, "alpha": 8.0, "seed": 0}, None, targets=resolve_targets(gpt2, {}))
    model = tiny()
    with pytest.raises(NotSupported, match="init_style"):
        Lycoris().attach(model, "lokr", {"r": 2, "alpha": 4.0, "init_style": "peft"}, None, targets=_targets(model, ["up"]))
    with pytest.raises(NotSupported, match="use_cayley_neumann"):
        Lycoris().attach(model, "oft", {"block_size": 8, "use_cayley_neumann": True}, None,
                         targets=_targets(model, ["up"]))
    assert Lycoris().supports("hra") and Lycoris().supports("lora") is None


def test_packed_skew_reads_writes_and_maps_gradients():
    """The canonical OFT Q (strict upper triangle of each skew Q_i) from LyCORIS's full blocks B, Q_i = B − Bᵀ."""
    t = PackedSkew()
    b = torch.randn(3, 4, 4, dtype=F64, requires_grad=True)
    q = t.read(b, None)
    rows, cols = torch.triu_indices(4, 4, 1)
    assert torch.equal(q, (b - b.transpose(-1, -2))[..., rows, cols])
    stored = torch.zeros(3, 4, 4, dtype=F64)
    t.write(stored, q.detach())
    assert torch.allclose(stored - stored.transpose(-1, -2), (b - b.transpose(-1, -2)).detach())
    # ∂L/∂q from ∂L/∂B for L = <Q(B), G>: the packed gradient is the upper triangle of G − Gᵀ
    g = torch.randn(3, 4, 4, dtype=F64)
    ((b - b.transpose(-1, -2)) * g).sum().backward()
    assert torch.allclose(t.grad(b.grad, None), (g - g.transpose(-1, -2))[..., rows, cols])


def test_every_deviation_is_lycoris_own_and_sourced():
    for method, devs in DEVIATIONS.items():
        assert len({d.id for d in devs}) == len(devs)
        for d in devs:
            assert d.reference == "lycoris" and d.subjects == ("lycoris",)
            assert d.source.startswith("lycoris/") and ".py:" in d.source, d.id


# -- each finding, against LyCORIS directly -------------------------------------------------------------

def test_gpt2_conv1d_layers_get_no_module_silently():
    """lycoris-*-linear-only: transformers' Conv1D is neither nn.Linear nor nn.Conv1d: no module, no error."""
    from transformers.pytorch_utils import Conv1D
    model = nn.Sequential()
    model.add_module("c_attn", Conv1D(192, 64))
    net = lyco(model, "lora", targets=("c_attn",))
    assert net.loras == [] and "forward" not in model.c_attn.__dict__
    assert deviation("lora", "lycoris-lora-linear-only").models == ("gpt2",)


def test_load_weights_accepts_missing_and_unexpected_keys(tmp_path):
    """lycoris-*-load-missing-keys / -unexpected-keys: load_weights loads non-strictly and only returns the keys."""
    from safetensors.torch import load_file, save_file
    net = lyco(tiny(), "lora")
    randomize(net)
    path = str(tmp_path / "a.safetensors")
    net.save_weights(path, None, {})
    sd = load_file(path)
    dropped = sorted(sd)[0]
    save_file({k: v for k, v in sd.items() if k != dropped}, str(tmp_path / "missing.safetensors"))
    save_file({**sd, "unexpected_module.x": torch.zeros(1)}, str(tmp_path / "extra.safetensors"))
    fresh = lyco(tiny(), "lora")
    assert fresh.load_weights(str(tmp_path / "missing.safetensors")) == {"missing keys": [dropped]}
    fresh = lyco(tiny(), "lora")
    assert fresh.load_weights(str(tmp_path / "extra.safetensors")) == {"unexpected keys": ["unexpected_module.x"]}


def test_onfly_merge_twice_adds_the_adapter_twice():
    """lycoris-*-merge-twice: W′ = W + 2·sBA after two onfly_merge calls (the paper's W′ = W + sBA)."""
    model = tiny()
    net = lyco(model, "lora", targets=("up",), dim=4, alpha=8.0)
    randomize(net)
    m = modules(net)["up"]
    w0, delta = d64(model.up.weight), 2.0 * d64(m.lora_up.weight) @ d64(m.lora_down.weight)
    net.restore()
    net.onfly_merge(1.0)
    assert rel(model.up.weight, w0 + delta) < 1e-6
    net.onfly_merge(1.0)
    assert rel(model.up.weight, w0 + 2 * delta) < 1e-6 and rel(model.up.weight, w0 + delta) > 0.1


@pytest.mark.parametrize("algo,kw", [("lora", {}), ("ia3", {})])
def test_onfly_restore_gives_nothing_back_on_cpu(algo, kw):
    """lycoris-*-onfly-restore-noop: the cache is the live weight itself on CPU (.cpu() of a CPU tensor is the
    tensor), so onfly_restore copies the merged weight onto itself."""
    model = tiny()
    net = lyco(model, algo, targets=("up",), **kw)
    randomize(net)
    w0 = model.up.weight.detach().clone()
    net.restore()
    net.onfly_merge(1.0)
    m = modules(net)["up"]
    assert m.cached_org_weight.data_ptr() == model.up.weight.data_ptr()  # the alias
    merged = model.up.weight.detach().clone()
    net.onfly_restore()
    assert torch.equal(model.up.weight, merged) and rel(model.up.weight, w0) > 0.05


def test_unknown_options_are_accepted_silently():
    """lycoris-*-unknown-options-ignored: both create_lycoris (a whitelist) and the constructor (**kwargs to the
    modules, unread) accept an option that does not exist."""
    assert len(lyco(tiny(), "lora", bogus_field=1).loras) == 2
    assert len(lyco(tiny(), "lora", ctor=True, bogus_field=1).loras) == 2
    # the documented pitfall: create_lycoris drops the constructor's own option names too
    net = lyco(tiny(), "lora", weight_decompose=True)
    assert not any(m.wd for m in net.loras)


def test_rank_zero_is_accepted_and_adapts_nothing():
    """lycoris-*-rank-zero-accepted: linear_dim = 0 creates no module for any layer, without an error."""
    assert lyco(tiny(), "lora", dim=0).loras == []


def test_a_string_rank_raises_pythons_generic_type_error():
    """lycoris-*-rank-type-unchecked: linear_dim = '4' reaches `lora_dim > 0`; the message names no option."""
    with pytest.raises(TypeError) as e:
        lyco(tiny(), "lora", dim="4", ctor=True)
    assert "not supported between instances of 'str' and 'int'" in str(e.value)
    assert "dim" not in str(e.value) and "4" not in str(e.value)


def _loha_delta(m) -> torch.Tensor:
    return (d64(m.hada_w1_a) @ d64(m.hada_w1_b)) * (d64(m.hada_w2_a) @ d64(m.hada_w2_b))


def test_loha_merge_applies_the_scale_twice():
    """lycoris-loha-merge-scale-squared: the forward computes W + s·P⊙Q (the paper), merge_to writes W + s²·P⊙Q."""
    model = tiny()
    net = lyco(model, "loha", targets=("up",), dim=4, alpha=8.0)  # s = 2
    randomize(net)
    m, s = modules(net)["up"], 8.0 / 4
    w, b = d64(model.up.weight), d64(model.up.bias)
    x = torch.randn(5, 48)
    paper = d64(x) @ (w + s * _loha_delta(m)).t() + b
    assert rel(model.up(x), paper) < 1e-5  # the forward is the paper's
    net.restore()
    net.merge_to(1.0)
    assert rel(model.up.weight, w + s * s * _loha_delta(m)) < 1e-6
    err = rel(model.up.weight, w + s * _loha_delta(m))
    assert 0.05 < err <= deviation("loha", "lycoris-loha-merge-scale-squared").magnitude


def test_loha_merge_is_right_when_alpha_equals_r():
    model = tiny()
    net = lyco(model, "loha", targets=("up",), dim=4, alpha=4.0)  # s = 1: s² = s
    randomize(net)
    m, w = modules(net)["up"], d64(model.up.weight)
    net.restore()
    net.merge_to(1.0)
    assert rel(model.up.weight, w + _loha_delta(m)) < 1e-6


def test_lokr_merge_applies_the_scale_twice():
    """lycoris-lokr-merge-scale-squared: forward W + γ·W₁⊗W₂ (the paper), merge_to W + γ²·W₁⊗W₂."""
    model = tiny()
    net = lyco(model, "lokr", targets=("up",), dim=2, alpha=4.0)  # γ = 2, W₂ low rank
    randomize(net)
    m, g = modules(net)["up"], 4.0 / 2
    assert not m.use_w2
    kron = torch.kron(d64(m.lokr_w1), d64(m.lokr_w2_a) @ d64(m.lokr_w2_b))
    w, b = d64(model.up.weight), d64(model.up.bias)
    x = torch.randn(5, 48)
    assert rel(model.up(x), d64(x) @ (w + g * kron).t() + b) < 1e-5
    net.restore()
    net.merge_to(1.0)
    assert rel(model.up.weight, w + g * g * kron) < 1e-6
    err = rel(model.up.weight, w + g * kron)
    assert 0.05 < err <= deviation("lokr", "lycoris-lokr-merge-scale-squared").magnitude


def test_loha_alpha_zero_and_inf_are_accepted():
    """lycoris-loha-alpha-zero-accepted / -alpha-inf-accepted: 0 silently means alpha = r, inf is taken as is."""
    assert {m.scale for m in lyco(tiny(), "loha", dim=4, alpha=0.0).loras} == {1.0}
    assert {m.scale for m in lyco(tiny(), "loha", dim=4, alpha=math.inf).loras} == {math.inf}


def test_lokr_factor_zero_and_negative_are_accepted():
    """lycoris-lokr-factor-*-accepted: factor 0 gives a 1×1 W₁; factor −3 is read as 'no cap' (as −1)."""
    m = modules(lyco(tiny(), "lokr", targets=("up",), dim=2, factor=0))["up"]
    assert tuple(m.lokr_w1.shape) == (1, 1)
    default = modules(lyco(tiny(), "lokr", targets=("up",), dim=2))["up"]
    neg = modules(lyco(tiny(), "lokr", targets=("up",), dim=2, factor=-3))["up"]
    assert neg.lokr_w1.shape == default.lokr_w1.shape == (8, 6)


def test_diag_oft_rotates_the_output_side():
    """lycoris-oft-output-side: W′ = RᵀW with R = ⊕ Cayley(B_i − B_iᵀ) over d_out; the paper's W′ = W Rᵀ over d_in
    keeps W Wᵀ (the neurons' angles and norms), LyCORIS's keeps WᵀW instead."""
    model = tiny()
    net = lyco(model, "diag-oft", targets=("up",), dim=8)
    m = modules(net)["up"]
    assert tuple(m.oft_blocks.shape) == (80 // 8, 8, 8) != (48 // 8, 8, 8)  # blocks over d_out, not d_in
    randomize(net, std=0.05)
    r = torch.block_diag(*cayley_blocks(m.oft_blocks).unbind(0))
    w, b = d64(model.up.weight), d64(model.up.bias)
    x = torch.randn(5, 48)
    assert rel(model.up(x), d64(x) @ (r.t() @ w).t() + b) < 1e-5
    with torch.no_grad():  # W′ read off the layer: y(e_j) − y(0) = W′ e_j
        w_eff = d64((model.up(torch.eye(48)) - model.up(torch.zeros(1, 48))).t())
    assert rel(w_eff.t() @ w_eff, w.t() @ w) < 1e-5  # input Gram kept: an output-side rotation
    assert rel(w_eff @ w_eff.t(), w @ w.t()) > 1e-2  # the paper's invariant (energy of the neurons) broken


def test_diag_oft_block_size_follows_d_out_and_is_changed_silently():
    """lycoris-oft-output-side (block size) and -block-size-7/1-accepted: factorization(d_out, lora_dim)."""
    assert modules(lyco(tiny(), "diag-oft", dim=8))["down"].block_size == 6  # d_out 48: 6 blocks of 8 -> 8 of 6
    seven = modules(lyco(tiny(), "diag-oft", dim=7))
    assert {k: v.block_size for k, v in seven.items()} == {"up": 5, "down": 6}
    ones = lyco(tiny(), "diag-oft", dim=1)
    m = modules(ones)["up"]
    assert tuple(m.oft_blocks.shape) == (80, 1, 1)
    randomize(ones)
    assert torch.equal(m.get_r(), torch.ones(80, 1, 1))  # 1×1 blocks: Q = B − Bᵀ = 0, R = I forever


def test_ia3_does_not_scale_the_bias():
    """lycoris-ia3-bias-unscaled*: LyCORIS y = diag(l)Wx + b, the paper y = l ⊙ (Wx + b), l = 1 + w; its merge
    leaves the bias too (the paper's merged bias is l ⊙ b)."""
    model = tiny()
    net = lyco(model, "ia3", targets=("up",))
    m = modules(net)["up"]
    randomize(net, std=0.2)
    l, w, b = 1 + d64(m.weight), d64(model.up.weight), d64(model.up.bias)
    x = torch.randn(5, 48)
    lyco_formula = d64(x) @ (l[:, None] * w).t() + b
    paper = l * (d64(x) @ w.t() + b)
    assert rel(model.up(x), lyco_formula) < 1e-5
    assert rel(model.up(x), paper) > 1e-3
    assert torch.allclose(d64(model.up(torch.zeros(1, 48)))[0], b)  # x = 0: b, not l ⊙ b
    net.restore()
    net.merge_to(1.0)
    assert torch.equal(d64(model.up.bias), b) and rel(model.up.bias, l * b) > 0.05
    assert rel(model.up.weight, l[:, None] * w) < 1e-6


def test_ia3_ff_scales_the_input_and_leaves_the_bias():
    """ia3_ff maps onto train_on_input (constructor only): W′ = W diag(1 + w), b unchanged, as the card says."""
    model = tiny()
    net = lyco(model, "ia3", targets=("up",), ctor=True, train_on_input=True)
    m = modules(net)["up"]
    assert tuple(m.weight.shape) == (48,)
    randomize(net, std=0.2)
    l, w, b = 1 + d64(m.weight), d64(model.up.weight), d64(model.up.bias)
    x = torch.randn(5, 48)
    assert rel(model.up(x), d64(x) @ (w * l[None, :]).t() + b) < 1e-5


def test_dora_divides_by_the_norm_plus_eps():
    """lycoris-dora-norm-eps*: W′ = m ⊙ V/(‖V‖_row + ε), ε = finfo(float32).eps, so at init (m = ‖W‖) DoRA is not
    the identity the paper's m ⊙ V/‖V‖ is, by a relative ε/‖W‖_row per row."""
    model = tiny()
    with torch.no_grad():
        model.up.weight.mul_(0.05)  # small rows (norm ≈ 0.03) make ε/‖W‖ visible
    x = torch.randn(5, 48)
    y0 = model.up(x)
    lyco(model, "lora", targets=("up",), dora_wd=True)
    w = d64(model.up.weight)
    norm = w.norm(dim=1, keepdim=True)
    eps = torch.finfo(torch.float32).eps
    shrink = w * (norm.float().double() / (norm + eps)) - w  # ΔW of the ε: −W·ε/(‖W‖ + ε)
    got = d64(model.up(x)) - d64(y0)
    assert float(got.abs().max()) > 0  # not the identity at init
    assert rel(got, d64(x) @ shrink.t()) < 0.2  # it is the ε (rounded in float32)


def test_dora_crashes_on_a_bfloat16_model():
    """The error rows of dora in bfloat16: the decomposed weight comes back in the float32 of dora_scale and
    meets the bf16 input in F.linear (lycoris/modules/locon.py:339-347, functional/general.py:119)."""
    model = tiny().to(torch.bfloat16)
    lyco(model, "lora", targets=("up",), dora_wd=True)
    with pytest.raises(RuntimeError, match="same dtype"):
        model.up(torch.randn(2, 48, dtype=torch.bfloat16))


# -- end to end -------------------------------------------------------------------------------------------

def test_audit_lycoris_end_to_end(tmp_path):
    """A small audit through the CLI: no error row, every failing row declared, the verdicts expected, and the
    paper's open choices accepted (LoHa: w2_a = 0 with Gaussian draws)."""
    from audit.cli import main
    out = tmp_path / "out"
    rc = main(["run", "--subject", "lycoris", "--variants", "lora,loha,ia3", "--models", "mlp", "--dtypes", "float32",
               "--out", str(out), "--jobs", "1", "--quiet"])
    results = json.loads((out / "results.json").read_text())
    rows = [r for r in results["rows"] if r["about"] == "subject"]
    bad = [(r["variant"], r["check"], r["metric"], r["status"], r["message"][:120]) for r in rows
           if r["status"] in ("fail", "xpass", "error")]
    assert bad == [] and rc == 0
    verdicts = {k: v["verdict"] for k, v in results["verdicts"].items()}
    assert verdicts == {"lora": "partial", "loha": "partial", "ia3": "partial"}
    concerns = {k: {c: x["verdict"] for c, x in v["concerns"].items()} for k, v in results["verdicts"].items()}
    assert concerns["lora"]["equation"] == concerns["loha"]["equation"] == "conformant"
    assert concerns["ia3"]["equation"] == "partial"  # the unscaled bias, on the biased toy MLP
    assert concerns["loha"]["init"] == "conformant"
    xfails = {r["deviation"] for r in rows if r["status"] == "xfail"}
    assert {"lycoris-loha-merge-scale-squared", "lycoris-ia3-bias-unscaled", "lycoris-lora-onfly-restore-noop",
            "lycoris-lora-merge-twice"} <= xfails
    assert any(r["choice"] == "zero_factor=w2_a; factor_draw=gaussian" and r["status"] == "pass"
               for r in rows if r["variant"] == "loha" and r["check"] == "init")
