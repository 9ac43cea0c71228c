"""The peft subject across peft releases, without installing one: its version and feature logic
(supports(), config arguments a release lacks, get_peft_model's autocast_adapter_dtype) against a
faked older ``peft.__version__`` or missing names, and the OLDER_PATHS fallback on hand-built layers."""
from __future__ import annotations

import inspect

import peft
import pytest
import torch
from torch import nn

from audit import models
from audit.subjects import LayoutError, NotSupported
from audit.subjects import peft as subject
from audit.subjects.peft import NEEDS, OLDER_PATHS, OLDEST, Peft


def _as_release(monkeypatch, version: str) -> Peft:
    monkeypatch.setattr(peft, "__version__", version)
    return Peft()


def _supported(p: Peft) -> set[str]:
    return {m for m in NEEDS if p.supports(m) is None}


# -- supports() ---------------------------------------------------------------------------------------
# AdaLoRA 0.3.0, LoKr/LoHa 0.6.0; OFT 0.7.0 (its full-block layout before 0.16.0 is read through OLDER_LAYOUTS);
# BOFT 0.11.0
_OLD = {"lora", "dora", "ia3", "ia3_ff", "adalora", "lokr", "loha", "oft"}


@pytest.mark.parametrize("version, methods", [
    ("0.10.0", _OLD),
    ("0.11.1", _OLD | {"pissa", "vera", "boft"}),
    ("0.13.2", _OLD | {"pissa", "vera", "boft", "hra", "olora", "fourierft", "vblora"}),  # FourierFT 0.12, VB-LoRA 0.13
    ("0.14.0", _OLD | {"pissa", "vera", "boft", "hra", "olora", "fourierft", "vblora", "eva"}),  # CorDA, C3A 0.15.0
    ("0.15.2", _OLD | {"pissa", "vera", "boft", "hra", "olora", "fourierft", "vblora", "eva", "corda", "c3a"}),
    ("0.17.1", _OLD | {"pissa", "vera", "boft", "hra", "olora", "fourierft", "vblora", "eva", "corda", "c3a",
                       "miss", "shira", "randlora"}),  # RandLoRA 0.16.0; MiSS, SHiRA 0.17.0; RoAd/DeLoRA 0.18.0
    ("0.18.0", set(NEEDS) - {"loraga", "hira"}),  # LoRA-GA 0.19.0, HiRA 0.20.0
    ("0.19.0", set(NEEDS) - {"hira"}),
    ("0.20.0", set(NEEDS)),
])
def test_supports_follows_the_release(monkeypatch, version, methods):
    p = _as_release(monkeypatch, version)
    assert p.label == f"peft {version}"
    assert _supported(p) == methods
    for m in set(NEEDS) - methods:
        reason = p.supports(m)
        assert f"peft {version} has no {m}" in reason and f">= {NEEDS[m][1]}" in reason


def test_an_older_releases_layout_is_read_where_it_applies(monkeypatch):
    """OFT before 0.16 stored full blocks oft_r (r, b, b) and rotated by the Cayley map of 0.5·(B − Bᵀ): the
    subject maps that tensor (a packed-skew transform with factor 0.5) for those releases only."""
    from audit.subjects.transforms import PackedSkew
    old, new = _as_release(monkeypatch, "0.15.2").tensor_names["oft"], _as_release(monkeypatch, "0.16.0").tensor_names["oft"]
    paths, transform = old["Q"]
    assert paths == ("oft_r.default",) and isinstance(transform, PackedSkew) and transform.factor == 0.5
    assert new["Q"][0] == ("oft_R.default.weight",)
    blocks = torch.randn(3, 4, 4, dtype=torch.float64)
    q = transform.read(blocks, None)
    rows, cols = torch.triu_indices(4, 4, 1)
    assert torch.allclose(q, (0.5 * (blocks - blocks.transpose(-1, -2)))[:, rows, cols])
    stored = torch.zeros_like(blocks)
    transform.write(stored, q)
    assert torch.allclose(transform.read(stored, None), q)  # written back, it reads as the same canonical Q


def test_a_release_before_the_oldest_audited_supports_nothing(monkeypatch):
    p = _as_release(monkeypatch, "0.9.0")  # has LoRA, DoRA and IA3, but is below the subject's floor
    assert _supported(p) == set()
    assert f"older than {OLDEST}" in p.supports("lora")


def test_a_missing_export_is_unsupported_and_named(monkeypatch):
    p = _as_release(monkeypatch, "0.21.2")
    monkeypatch.delattr(peft, "HRAConfig")
    monkeypatch.delattr(peft, "initialize_lora_eva_weights")
    assert "lacks HRAConfig" in p.supports("hra")
    assert "lacks initialize_lora_eva_weights" in p.supports("eva")
    assert p.supports("lora") is None and p.supports("ia3") is None


def test_every_needed_name_exists_in_the_installed_peft():
    """A misspelt name in NEEDS would make a method silently unsupported on every release."""
    installed = Peft()
    for method, (names, since) in NEEDS.items():
        assert all(hasattr(peft, n) for n in names), method
        assert subject._at_least(installed.version, since), method
        assert installed.supports(method) is None


# -- config arguments and get_peft_model arguments a release lacks -------------------------------------
def test_a_config_argument_the_release_lacks_is_not_supported():
    p, model = Peft(), models.build("mlp")
    cfg = {"layers": [0], "target_roles": ("up",)}
    lora = p.peft_config(model, "lora", {"r": 2, **cfg})
    assert lora.layers_to_transform == [0]
    with pytest.raises(NotSupported, match="IA3Config has no layers_to_transform"):
        p.peft_config(model, "ia3", cfg)  # IA3Config never had layers_to_transform


def test_attach_without_autocast_adapter_dtype(monkeypatch):
    """peft < 0.12 has no autocast_adapter_dtype (its get_peft_model would raise a TypeError): the subject
    must not pass it. The stand-in does what those releases did: adapters in the base layer's dtype."""
    real, calls = peft.get_peft_model, []

    def old_get_peft_model(model, peft_config, adapter_name="default", mixed=False):
        calls.append("old")
        return real(model, peft_config, adapter_name=adapter_name, mixed=mixed, autocast_adapter_dtype=False)

    assert "autocast_adapter_dtype" in inspect.signature(real).parameters
    monkeypatch.setattr(peft, "get_peft_model", old_get_peft_model)
    model = models.build("mlp", dtype=torch.bfloat16)
    pm = Peft().attach(model, "lora", {"r": 2, "target_roles": ("up",), "dtype": "float32"}, None)
    assert calls == ["old"]
    layers = Peft().adapted_layers(pm)
    assert sorted(layers) == ["layers.0.up_proj", "layers.1.up_proj"]
    assert all(layer.lora_A["default"].weight.dtype == torch.bfloat16 for layer in layers.values())


def test_attach_passes_autocast_adapter_dtype_where_the_release_has_it(monkeypatch):
    real, seen = peft.get_peft_model, []

    def spy(model, peft_config, adapter_name="default", mixed=False, autocast_adapter_dtype=True, **kw):
        seen.append(autocast_adapter_dtype)
        return real(model, peft_config, adapter_name=adapter_name, mixed=mixed,
                    autocast_adapter_dtype=autocast_adapter_dtype, **kw)

    monkeypatch.setattr(peft, "get_peft_model", spy)
    for dtype, want in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        model = models.build("mlp", dtype=torch.bfloat16)
        pm = Peft().attach(model, "lora", {"r": 2, "target_roles": ("up",), "dtype": dtype}, None)
        assert Peft().adapted_layers(pm)["layers.0.up_proj"].lora_A["default"].weight.dtype == want
    assert seen == [False, True]


# -- OLDER_PATHS: DoRA's magnitude stored the pre-0.12 way ---------------------------------------------
class _Dora(nn.Module):
    """A hand-built LoRA layer with DoRA's magnitude either way peft stored it."""

    def __init__(self, d_in: int = 6, d_out: int = 5, r: int = 2, old: bool = True):
        super().__init__()
        self.base_layer = nn.Linear(d_in, d_out)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(d_in, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, d_out, bias=False)})
        m = torch.arange(1.0, d_out + 1)
        if old:  # peft 0.9.0-0.11.1: LoraLayer.lora_magnitude_vector is an nn.ParameterDict
            self.lora_magnitude_vector = nn.ParameterDict({"default": nn.Parameter(m)})
        else:    # peft >= 0.12.0: a DoraLinearLayer per adapter, its magnitude in .weight
            dora = nn.Module()
            dora.weight = nn.Parameter(m)
            self.lora_magnitude_vector = nn.ModuleDict({"default": dora})


def test_dora_magnitude_resolves_from_the_older_layout():
    paths, transform = Peft().tensor_names["dora"]["m"]
    assert paths == ("lora_magnitude_vector.default.weight", *OLDER_PATHS[("dora", "m")])
    old = _Dora(old=True)
    got = Peft().layer_tensors(old, "dora")
    t, tr, where = got["m"]
    assert t is old.lora_magnitude_vector["default"] and where == "lora_magnitude_vector.default"
    assert tr == transform
    assert got["A"][0] is old.lora_A["default"].weight and got["B"][0] is old.lora_B["default"].weight


def test_dora_magnitude_prefers_the_current_layout():
    new = _Dora(old=False)
    t, _, where = Peft().layer_tensors(new, "dora")["m"]
    assert t is new.lora_magnitude_vector["default"].weight and where == "lora_magnitude_vector.default.weight"


def test_dora_magnitude_nowhere_names_every_path_tried():
    layer = _Dora(old=True)
    del layer.lora_magnitude_vector
    with pytest.raises(LayoutError, match=r"'m' is at none of 'lora_magnitude_vector\.default\.weight', "
                                          r"'lora_magnitude_vector\.default'"):
        Peft().layer_tensors(layer, "dora")
