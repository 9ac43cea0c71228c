"""GPT-2's transformers Conv1D (weight stored transposed, (d_in, d_out)) and fused projections
(Phi-3's qkv_proj / gate_up_proj, GPT-2's c_attn) in the runtime.

The strongest statement about Conv1D: a GPT-2 whose Conv1D layers are swapped for nn.Linear layers
holding the same canonical W (= Conv1D weight transposed) must get the *same* adapter from the same
config and seed, every tensor and every output equal, at init and after the state moves. An SVD of the
stored (un-transposed) weight, a norm over the wrong axis or a residual written back untransposed
breaks that equality on the square attention c_proj even where shapes happen to fit.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import variants
from audit import models
from audit.state import perturb
from conftest import CASE_NAMES, all_adapter_tensors, attach, fresh

GPT2_TARGETS = sorted(f"transformer.h.{i}.{leaf}" for i in (0, 1)
                      for leaf in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))


def as_linear(model: nn.Module) -> nn.Module:
    """The same model with every Conv1D replaced by an nn.Linear holding W = weight.T and the same bias."""
    for name, mod in list(model.named_modules()):
        if type(mod).__name__ == "Conv1D":
            d_in, d_out = mod.weight.shape
            lin = nn.Linear(d_in, d_out, dtype=mod.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.t())
                lin.bias.copy_(mod.bias)
            parent, leaf = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), leaf, lin)
    return model


def canonical(mod: nn.Module) -> torch.Tensor:
    return mod.weight.t() if type(mod).__name__ == "Conv1D" else mod.weight


@pytest.mark.parametrize("case", CASE_NAMES)
def test_conv1d_adapter_equals_the_linear_one(case):
    conv = fresh("gpt2")
    lin = as_linear(fresh("gpt2"))
    ids = models.example_inputs(conv)
    with torch.no_grad():
        assert torch.allclose(models.logits(conv, ids), models.logits(lin, ids), rtol=1e-5, atol=1e-6)
    attach(conv, case)
    attach(lin, case)
    tc, tl = variants.state_of(conv).targets, variants.state_of(lin).targets
    assert list(tc) == list(tl) and set(tc) <= set(GPT2_TARGETS)
    for n in tc:
        a, b = variants.adapter_tensors(tc[n]), variants.adapter_tensors(tl[n])
        assert a.keys() == b.keys()
        for k in a:  # same init: the same draws, the SVD and norms of the same canonical W
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), (case, n, k)
        assert torch.allclose(canonical(tc[n]), tl[n].weight, rtol=1e-5, atol=1e-6), (case, n)  # W_res alike
    with torch.no_grad():
        for k, v in all_adapter_tensors(conv).items():
            if not v.is_floating_point():  # integer positions (SHiRA's mask): copied, not moved
                all_adapter_tensors(lin)[k].copy_(v)
                continue
            v.add_(torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k))) * 0.05)
            all_adapter_tensors(lin)[k].copy_(v)
        # away from init: a norm over the wrong axis hides at init (m / ‖W‖ = 1), not here
        assert torch.allclose(models.logits(conv, ids), models.logits(lin, ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_conv1d_detach_restores_the_exact_base_and_save_load_round_trips(case, tmp_path):
    model = fresh("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = models.example_inputs(model)
    attach(model, case)
    perturb(model, seed=3)
    with torch.no_grad():
        y = models.logits(model, ids)
    path = variants.save(model, tmp_path / "a.safetensors")
    variants.detach(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # W_res written through the view, undone
    other = variants.load(fresh("gpt2"), path)
    with torch.no_grad():
        assert torch.equal(models.logits(other, ids), y)


def test_gpt2_roles_resolve_c_proj_by_its_parent():
    assert variants.roles_of("transformer.h.0.attn.c_proj") == ("o",)
    assert variants.roles_of("transformer.h.0.mlp.c_proj") == ("down",)
    assert variants.roles_of("transformer.h.0.attn.c_attn") == ("q", "k", "v")
    assert variants.roles_of("transformer.h.0.mlp.c_fc") == ("up",)
    assert variants.role_of("transformer.h.0.attn.c_attn") is None  # fused: no single role
    assert variants.role_of("transformer.h.0.mlp.c_proj") == "down"
    assert variants.roles_of("lm_head") == ()
    cfg = variants.config("lora", r=2, target_roles=("o", "down"))
    got = variants.select_targets(fresh("gpt2"), cfg, variants.REGISTRY["lora"].default_roles)
    assert sorted(got) == sorted(f"transformer.h.{i}.{x}" for i in (0, 1) for x in ("attn.c_proj", "mlp.c_proj"))


def test_phi3_fused_layers_are_adapted_whole_never_skipped():
    model = fresh("phi3")
    variants.attach(model, variants.config("lora", r=4))
    leaves = {n.rsplit(".", 1)[-1] for n in variants.state_of(model).targets}
    assert leaves == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert variants.state_of(model).fused_extra == {}  # every role asked for: nothing beyond
    variants.detach(model)


def test_fused_layer_adapted_for_some_roles_warns_naming_the_others():
    model = fresh("phi3")
    with pytest.warns(UserWarning, match=r"fused layers are adapted as one layer.*qkv_proj also computes k"):
        variants.attach(model, variants.config("lora", r=4, target_roles=("q", "v")))
    st = variants.state_of(model)
    assert sorted(st.targets) == [f"model.layers.{i}.self_attn.qkv_proj" for i in (0, 1)]
    assert set(st.fused_extra.values()) == {("k",)}


def test_no_target_message_names_the_fused_layers():
    model = fresh("phi3")
    with pytest.raises(ValueError, match=r"no target matched.*qkv_proj \(fused q/k/v\).*gate_up_proj \(fused gate/up\)"):
        variants.attach(model, variants.config("lora", r=4, target_roles=("q",), exclude_names=("qkv",)))
