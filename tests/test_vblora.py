"""VB-LoRA (arXiv 2405.15179): our variant against the paper formula, the shared bank, the init statement,
config refusals, and the top-k checkpoint both ways with peft."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import variants
from references import paper
from references import peft_bridge as bridge

ref = paper.get("vblora")
NAMES = ["up", "down"]


class Toy(nn.Module):
    """Two layers of different sizes (16→24→8): the sub-vectors of 4 tile 4, 6 and 2 ways."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = nn.Linear(16, 24, dtype=dtype), nn.Linear(24, 8, dtype=dtype)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _attach(model, **kw):
    cfg = variants.config("vblora", **{"r": 3, "num_vectors": 6, "vector_length": 4, "topk": 2,
                                       "target_names": (r"^(up|down)$",), "dtype": "float64", **kw})
    return variants.attach(model, cfg), cfg


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in variants.adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _state(mod):
    return {t: v.detach() for t, v in variants.adapter_tensors(mod).items()}


@pytest.mark.parametrize("topk", [1, 2, 6])
def test_forward_and_gradients_match_the_paper_formula(topk):
    model, cfg = _attach(Toy(), topk=topk)
    _perturb(model)
    x = torch.randn(5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for name in NAMES:
        mod = getattr(model, name)
        xi = x if name == "up" else torch.randn(5, 24, dtype=torch.float64)
        want = ref.forward(xi, mod.weight.detach(), mod.bias.detach(), _state(mod), cfg.to_dict())
        assert torch.allclose(mod(xi), want, rtol=0, atol=1e-12), name
    # gradients of the shared bank: summed over both layers, as the paper formula sharing one leaf
    bank = torch.nn.Parameter(model.up.adapter_bank.detach().clone())
    y = x
    for name in NAMES:
        mod = getattr(model, name)
        st = {**_state(mod), "bank": bank}
        y = ref.forward(y, mod.weight.detach(), mod.bias.detach(), st, cfg.to_dict())
        y = torch.relu(y) if name == "up" else y
    y.square().sum().backward()
    model.zero_grad()
    model(x).square().sum().backward()
    assert torch.allclose(model.up.adapter_bank.grad, bank.grad, rtol=1e-10, atol=1e-14)


def test_subvector_layout_is_peft_s():
    """Row i of A is the concatenation of sub-vectors logits_A[i, 0..], column i of B that of logits_B[0.., i]."""
    model, cfg = _attach(Toy(), topk=1)
    bank = model.up.adapter_bank
    with torch.no_grad():
        bank.copy_(torch.arange(24, dtype=torch.float64).reshape(6, 4))
        la, lb = model.up.adapter_logits_A, model.up.adapter_logits_B
        la.copy_(-torch.arange(6.0).expand_as(la)), lb.copy_(-torch.arange(6.0).expand_as(lb))  # row 0 unless set
        la[1, 2, 5] = 1.0  # a_1, tile 2 <- bank row 5
        lb[3, 2, 4] = 1.0  # b_2, tile 3 <- bank row 4
    A, B = ref.factors(_state(model.up), cfg.to_dict())
    assert torch.equal(A[1, 8:12], bank[5].detach())
    assert torch.equal(B[12:16, 2], bank[4].detach())
    w_eff, _ = variants.effective_affine(model.up)
    assert torch.allclose(w_eff - model.up.weight, B @ A, atol=1e-12)


def test_the_bank_is_one_tensor_trained_once():
    model, _ = _attach(Toy())
    assert model.up.adapter_bank is model.down.adapter_bank
    params = variants.adapter_parameters(model)
    assert sum(p is model.up.adapter_bank for p in params) == 1 and len(params) == 5
    opt = torch.optim.SGD(params, lr=0.1)
    model(torch.randn(3, 16, dtype=torch.float64)).sum().backward()
    opt.step()
    assert model.up.adapter_bank is model.down.adapter_bank


def test_save_load_stores_the_bank_once_and_shares_it_again(tmp_path):
    model, _ = _attach(Toy())
    _perturb(model)
    path = variants.save(model, tmp_path / "a.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert sum(k.endswith("adapter_bank") for k in f.keys()) == 1
    fresh = variants.load(Toy(), path)
    assert fresh.up.adapter_bank is fresh.down.adapter_bank
    x = torch.randn(3, 16, dtype=torch.float64)
    assert torch.equal(fresh(x), model(x))


def test_init_statement_and_not_identity():
    model, cfg = _attach(Toy(), num_vectors=6, init_vector_bank_bound=0.02, init_logits_std=0.1)
    bank = model.up.adapter_bank.detach()
    assert 0 < bank.abs().max() <= 0.02
    for name in NAMES:
        mod = getattr(model, name)
        claims = {c.metric: c for c in ref.init_claims(mod.weight, mod.bias, _state(mod), cfg.to_dict())}
        assert claims["bank_uniform_ks_margin"].value >= 0
        # ΔW₀ ≠ 0, and each entry within r·bound² (convex combinations of bank entries)
        delta = ref.delta(mod.weight.detach(), _state(mod), cfg.to_dict())
        assert 0 < delta.abs().max() <= cfg.r * 0.02 ** 2


@pytest.mark.parametrize("fields,match", [
    ({"vector_length": 5}, "vector_length"), ({"topk": 0}, "topk"), ({"topk": 7}, "topk"),
    ({"init_vector_bank_bound": 0.0}, "init_vector_bank_bound"), ({"num_vectors": 0}, "num_vectors"),
    ({"init_logits_std": math.nan}, "init_logits_std"), ({"alpha": 2.0}, "alpha")])
def test_refusals_name_the_field(fields, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _attach(Toy(), **fields)


def test_paper_and_bridge_layout_agree():
    m = bridge.MAPPINGS["vblora"]
    assert {t.canonical for t in m.tensors} == set(ref.layout(16, 24, {"r": 3, "num_vectors": 6,
                                                                       "vector_length": 4}))
    assert ref.layout(16, 24, {"r": 3, "num_vectors": 6, "vector_length": 4}) == {
        "bank": (6, 4), "logits_A": (3, 4, 6), "logits_B": (6, 3, 6)}


def _close(y, want) -> bool:
    """Equal up to 32 float32 ulps of the largest output: the top-k weights go softmax → log → softmax (and the
    last one 1 − Σ of the others), a few ulps each (measured 2.9e-7 relative)."""
    return float((y - want).abs().max()) <= 2.0 ** -18 * float(want.abs().max())


def test_topk_checkpoint_both_ways_with_peft(tmp_path):
    """save_only_topk_weights: our folder holds peft's top-k form; peft and load_peft both compute our function
    up to the rounding of softmax → log → softmax; the peft-made one loads into ours likewise."""
    from peft import PeftModel
    model, cfg = _attach(Toy(torch.float32), dtype="float32", save_only_topk_weights=True)
    _perturb(model)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(3))
    want = model(x)
    variants.save_peft(model, tmp_path)
    from safetensors.torch import load_file
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.up.vblora_logits_A_topk_indices" in keys and "base_model.vblora_vector_bank" in keys
    assert not any(k.endswith(("vblora_logits_A", "vblora_logits_B")) for k in keys)
    theirs = PeftModel.from_pretrained(Toy(torch.float32), tmp_path).eval()
    assert _close(theirs(x), want)
    back = variants.load_peft(Toy(torch.float32), tmp_path)
    assert back.up.adapter_bank is back.down.adapter_bank
    assert variants.state_of(back).cfg.save_only_topk_weights
    assert torch.isfinite(back.up.adapter_logits_A).all()
    assert _close(back(x), want)
    theirs.save_pretrained(tmp_path / "peft")
    again = variants.load_peft(Toy(torch.float32), tmp_path / "peft")
    assert _close(again(x), theirs(x))
