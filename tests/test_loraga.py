"""LoRA-GA (arXiv 2407.05000): our variant, the paper formula and init statement, the gradient, peft's own init.

A toy causal LM (embedding → one adapted projection → head) in float64 so that equalities are judged at
float64 round-off (tolerances say why).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import variants
from references.paper import loraga as ref
from variants._calibration import causal_lm_loss, model_logits

VOCAB, D_IN, D_OUT = 17, 12, 20
# float64 round-off through a backward pass and an SVD (singular gaps ≳ 1e-3 of σ₁ here): far below any O(1) bug
TOL64 = 1e-9


class ToyLM(nn.Module):
    """Token ids → embedding → the adapted projection (Linear or Conv1D) → GELU → head: logits (B, T, V)."""

    def __init__(self, conv1d: bool, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, D_IN)
        self.proj = Conv1D(D_OUT, D_IN) if conv1d else nn.Linear(D_IN, D_OUT)
        self.head = nn.Linear(D_OUT, VOCAB)
        with torch.no_grad():
            self.proj.weight.normal_()
            self.proj.bias.normal_()
        self.double()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids):
        return self.head(torch.nn.functional.gelu(self.proj(self.embed(input_ids))))


def canonical(layer):
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def calibration(n=3, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (4, 9), generator=g) for _ in range(n)]


def autograd_gradient(model, data) -> torch.Tensor:
    """∂ℓ/∂W by plain autograd on the weight, averaged over batches (independent of the variant's output-grad path)."""
    w = model.proj.weight
    w.requires_grad_(True)
    total = torch.zeros_like(canonical(model.proj), dtype=torch.float64)
    for b in data:
        (g,) = torch.autograd.grad(causal_lm_loss(model_logits(model, b), b), [w])
        total += g.t() if isinstance(model.proj, Conv1D) else g
    w.requires_grad_(False)
    return (total / len(data)).detach()


def attach(model, data, **fields):
    cfg = variants.config("loraga", **{"r": 3, "alpha": 6.0, "use_rslora": True, "dtype": "float64",
                                       "target_names": ("proj",), **fields})
    return variants.attach(model, cfg, calibration_data=data), cfg


def state_of(layer):
    return {"A": layer.adapter_A.detach(), "B": layer.adapter_B.detach()}


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("fields", [{}, {"direction": "A2rBr"}, {"direction": "ArBr", "stable_gamma": 64.0},
                                    {"use_rslora": False}], ids=["paper", "a2rbr", "arbr-g64", "alpha-over-r"])
def test_init_statement_identity_and_forward(conv1d, fields):
    model, data = ToyLM(conv1d), calibration()
    G = autograd_gradient(model, data)
    W0 = canonical(model.proj).detach().clone()
    ids = data[0]
    want = model(ids)
    _, cfg = attach(model, data, **fields)
    st, c = state_of(model.proj), cfg.to_dict()
    assert (model(ids) - want).abs().max() <= TOL64 * want.abs().max()  # W_res + η·BA = W
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = ref.forward(x, canonical(model.proj), model.proj.bias, st, c)
    assert (y - model.proj(x)).abs().max() <= TOL64 * y.abs().max()
    for claim in ref.init_claims(W0, None, st, c, G):
        assert claim.value <= TOL64, (claim.metric, claim.value)
    variants.detach(model)
    assert torch.equal(canonical(model.proj), W0)


def test_stable_scale_on_both_factors():
    """Algorithm 1: AAᵀ = BᵀB = c²I with c = d_out^{1/4}/√γ."""
    model, data = ToyLM(False), calibration()
    attach(model, data, stable_gamma=9.0)
    st = state_of(model.proj)
    c2 = D_OUT ** 0.5 / 9.0
    assert torch.allclose(st["A"] @ st["A"].T, c2 * torch.eye(3, dtype=torch.float64), atol=TOL64)
    assert torch.allclose(st["B"].T @ st["B"], c2 * torch.eye(3, dtype=torch.float64), atol=TOL64)


def test_statement_rejects_peft_style_factors():
    """peft's B = c·U_J diag(S_J) with A = V_Iᵀ unscaled: the spans are right, the scales and first step are not."""
    model, data = ToyLM(False), calibration()
    G = autograd_gradient(model, data)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    c = ref.stable_scale(D_OUT, {"stable_gamma": 16.0})
    st = {"A": Vh[:3], "B": c * U[:, 3:6] * S[3:6]}
    claims = {cl.metric: cl.value for cl in ref.init_claims(canonical(model.proj), None, st, {"r": 3, "alpha": 6.0}, G)}
    assert claims["A_subspace_err"] <= TOL64 and claims["B_subspace_err"] <= TOL64
    assert claims["A_scaled_orthonormal"] > 0.1 and claims["B_scaled_orthonormal"] > 0.1
    assert claims["gradient_approximation_err"] > 0.1


def test_every_split_approximates_the_gradient_and_only_its_own_spans():
    """§3.2: any split of the top 2r pairs gives the rank-2r first step; the subspace claims tell the splits apart."""
    model, data = ToyLM(False), calibration()
    G = autograd_gradient(model, data)
    W0 = canonical(model.proj).detach().clone()
    for direction in ref_directions():
        m = ToyLM(False)
        _, cfg = attach(m, data, direction=direction)
        st = state_of(m.proj)
        for other in ref_directions():
            claims = {cl.metric: cl.value for cl in ref.init_claims(W0, None, st, {**cfg.to_dict(), "direction": other}, G)}
            assert claims["gradient_approximation_err"] <= TOL64
            assert (claims["A_subspace_err"] <= TOL64) == (other == direction), (direction, other, claims)


def ref_directions():
    return ("ArB2r", "A2rBr", "ArBr")


def test_padding_and_ignored_labels_do_not_move_the_gradient():
    """The loss ignores labels = -100 and attention_mask 0, so tokens marked so change nothing (a causal toy: each
    position sees only its own token, so only the loss terms matter)."""
    data = calibration(1)
    ids = data[0]
    labels = ids.clone()
    labels[:, 6:] = -100
    other = ids.clone()
    other[:, 7:] = (other[:, 7:] + 3) % VOCAB  # position 6 predicts label 7 (ignored): only 7.. may change
    a = {"input_ids": ids, "labels": labels}
    b = {"input_ids": other, "labels": labels}
    assert torch.equal(autograd_gradient(ToyLM(False), [a]), autograd_gradient(ToyLM(False), [b]))
    m1, m2 = ToyLM(False), ToyLM(False)
    attach(m1, [a])
    attach(m2, [b])
    assert torch.equal(m1.proj.adapter_A, m2.proj.adapter_A) and torch.equal(m1.proj.adapter_B, m2.proj.adapter_B)


def test_config_and_data_refusals(tmp_path):
    with pytest.raises(ValueError, match="direction"):
        variants.config("loraga", direction="BrAr")
    with pytest.raises(ValueError, match="stable_gamma"):
        variants.config("loraga", stable_gamma=0.0)
    with pytest.raises(ValueError, match="calibration_data"):
        attach(ToyLM(False), None)
    with pytest.raises(ValueError, match="2r|/2"):
        attach(ToyLM(False), calibration(), r=7)  # 2r = 14 > min(12, 20)
    model = ToyLM(False)
    attach(model, calibration())
    with pytest.raises(ValueError, match="calibration gradient"):
        variants.save_peft(model, tmp_path)


def test_peft_subject_runs_peft_own_lora_ga_init():
    """The peft subject's attach runs preprocess_loraga (with the audit's loss) and lora_ga_init: the adapted model
    equals the base at init, up to float32 rounding at κ ≈ 6× W on the toy MLP (audit/cards/loraga.py)."""
    pytest.importorskip("peft")
    from audit import models
    from audit.subjects.peft import Peft
    base = models.build("mlp", seed=0)
    cal = [models.example_inputs(base, batch=4, seed=100 + i) for i in range(4)]
    cfg = {"r": 4, "alpha": 8.0, "use_rslora": True, "direction": "ArB2r", "stable_gamma": 16.0}
    pm = Peft().attach(models.clone(base), "loraga", cfg, cal)
    ids = models.example_inputs(base)
    want = models.logits(base, ids)
    assert (models.logits(pm, ids) - want).abs().max() <= 1e-5 * want.abs().max()
