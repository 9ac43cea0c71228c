"""CorDA (arXiv 2406.05223): our variant, the paper formula and init statement, the peft bridge, peft's own init.

Toy layers in float64 so that equalities are judged at float64 round-off (tolerances say why).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import variants
from references.paper import corda as ref

D_IN, D_OUT = 12, 20
# float64 round-off through an SVD and a solve with C (condition ≲ 1e2 on these inputs): far below any O(1) bug
TOL64 = 1e-10


class Toy(nn.Module):
    """One adapted projection: nn.Linear, or transformers' Conv1D (weight stored (d_in, d_out))."""

    def __init__(self, conv1d: bool, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = Conv1D(D_OUT, D_IN) if conv1d else nn.Linear(D_IN, D_OUT)
        with torch.no_grad():
            self.proj.weight.normal_()
            self.proj.bias.normal_()
        self.double()

    def forward(self, x):
        return self.proj(x)


def canonical(layer):
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def calibration(n_batches=3, seed=5):
    """Anisotropic inputs (a random mixing of scaled coordinates), so W C's components differ from W's."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, D_IN, dtype=torch.float64)
    return [torch.randn(4, 6, D_IN, generator=g, dtype=torch.float64) @ mix for _ in range(n_batches)]


def attach(model, data, **fields):
    cfg = variants.config("corda", **{"r": 4, "alpha": 4.0, "dtype": "float64", "target_names": ("proj",), **fields})
    return variants.attach(model, cfg, calibration_data=data), cfg


def state_of(layer):
    return {"A": layer.adapter_A.detach(), "B": layer.adapter_B.detach()}


def inputs_of(data):
    return torch.cat([x.reshape(-1, D_IN) for x in data])


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("fields", [{}, {"corda_method": "kpm"}, {"alpha": 8.0}], ids=["ipm", "kpm", "alpha8"])
def test_init_statement_identity_and_forward(conv1d, fields):
    model, data = Toy(conv1d), calibration()
    W0 = canonical(model.proj).detach().clone()
    x = inputs_of(data)
    want = model(x)
    _, cfg = attach(model, data, **fields)
    st, c = state_of(model.proj), cfg.to_dict()
    assert (model(x) - want).abs().max() <= TOL64 * want.abs().max()  # W_res + s·BA = W
    y = ref.forward(x, canonical(model.proj), model.proj.bias, st, c)
    assert (y - model(x)).abs().max() <= TOL64 * y.abs().max()
    # ours damps C as the authors' code (the card's open choice "authors")
    for claim in ref.init_claims(W0, None, st, {**c, "damping": 0.01}, x):
        assert claim.value <= TOL64, (claim.metric, claim.value)
    variants.detach(model)
    assert torch.equal(canonical(model.proj), W0)


def test_modes_take_the_largest_or_the_smallest_components():
    """IPM adapts the r largest σ of W C, KPM the r smallest: each is refused by the other's statement."""
    data = calibration()
    x = inputs_of(data)
    for mode, other in (("ipm", "kpm"), ("kpm", "ipm")):
        model = Toy(False)
        W0 = canonical(model.proj).detach().clone()
        _, cfg = attach(model, data, corda_method=mode)
        c = {**cfg.to_dict(), "damping": 0.01}
        part = {cl.metric: cl.value for cl in ref.init_claims(W0, None, state_of(model.proj), {**c, "corda_method": other}, x)}
        assert part["adapter_part"] > 0.1, (mode, part)


def test_statement_rejects_a_decomposition_of_w_without_the_covariance():
    """PiSSA's factors (the SVD of W itself) reconstruct W too, but are not CorDA's: the statement says so."""
    model, data = Toy(False), calibration()
    W = canonical(model.proj).detach().double()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    st = {"A": S[:4].sqrt()[:, None] * Vh[:4], "B": U[:, :4] * S[:4].sqrt()}
    claims = {c.metric: c.value for c in ref.init_claims(W, None, st, {"r": 4, "alpha": 4.0, "damping": 0.01},
                                                          inputs_of(data))}
    assert claims["adapter_part"] > 0.05


def test_statement_is_free_in_the_scale_of_c():
    """A covariance summed rather than averaged moves weight between A and B; the statement takes either."""
    model, data = Toy(False), calibration()
    W = canonical(model.proj).detach().double()
    x = inputs_of(data)
    C = x.T @ x  # the sum: n times the mean the variant uses
    C = C + 0.01 * torch.diagonal(C).mean() * torch.eye(D_IN, dtype=C.dtype)
    U, S, Vhat = ref._components(W, C, 4, "ipm")
    st = {"A": S.sqrt()[:, None] * Vhat, "B": U * S.sqrt()}
    for claim in ref.init_claims(W, None, st, {"r": 4, "alpha": 4.0, "damping": 0.01}, x):
        assert claim.value <= TOL64, (claim.metric, claim.value)


def test_config_and_data_refusals():
    with pytest.raises(ValueError, match="corda_method"):
        variants.config("corda", corda_method="both")
    with pytest.raises(ValueError, match="use_rslora"):
        variants.config("corda", use_rslora=True)
    with pytest.raises(ValueError, match="calibration_data"):
        attach(Toy(False), None)
    with pytest.raises(ValueError, match="r"):
        attach(Toy(False), calibration(), r=13)


def test_peft_format_refuses_both_ways(tmp_path):
    """peft's CorDA checkpoint cannot rebuild W_res from the folder: save_peft refuses, naming why."""
    model, data = Toy(False), calibration()
    attach(model, data)
    with pytest.raises(ValueError, match="calibration covariance"):
        variants.save_peft(model, tmp_path)


def test_peft_subject_runs_peft_own_corda_init():
    """The peft subject's attach runs preprocess_corda and corda_init: W_res + s·BA = W at init in float32."""
    pytest.importorskip("peft")
    from audit import models
    from audit.subjects.peft import Peft
    base = models.build("mlp", seed=0)
    cal = [models.example_inputs(base, batch=4, seed=100 + i) for i in range(4)]
    ids = models.example_inputs(base)
    want = models.logits(base, ids)
    pm = Peft().attach(models.clone(base), "corda", {"r": 4, "alpha": 4.0, "corda_method": "kpm"}, cal)
    got = models.logits(pm, ids)
    # float32 rounding of W_res and of s·BA (~2⁻²⁴ relative each), through two blocks and a head
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
