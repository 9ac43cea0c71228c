"""Tolerances that follow the numerics (audit/numerics.py) and the checks built on them."""
from __future__ import annotations

import torch

import variants
from audit import runner
from audit.cards import get
from audit.cell import Cell
from audit.numerics import (SPREAD_FACTOR, jitter, rel_err, spread_tolerance, term_magnitudes,
                            unit_roundoff)
from references import paper
from variants.lora import Lora


def test_spread_tolerance_is_a_multiple_of_the_spread_floored_at_u():
    assert spread_tolerance([1e-5, 3e-5], torch.float32) == SPREAD_FACTOR * 3e-5
    assert spread_tolerance([0.0], torch.float32) == SPREAD_FACTOR * 2.0 ** -24
    assert spread_tolerance([0.0], torch.bfloat16) == SPREAD_FACTOR * 2.0 ** -8


def test_jitter_moves_entries_by_about_one_rounding():
    t = torch.randn(1000, dtype=torch.float32)
    j = jitter(t, torch.float32, torch.Generator().manual_seed(0))
    rel = ((j.double() - t.double()) / t.double()).abs()
    assert 0 < rel.max() <= 8 * unit_roundoff(torch.float32)
    assert (rel > 0).float().mean() > 0.2  # most entries move by one ulp, not just a few
    assert jitter(None, torch.float32, torch.Generator()) is None


def test_rel_err_with_a_scale_divides_by_the_scale():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])
    assert rel_err(a, b) == float(torch.tensor(1.0) / b.double().norm())
    assert rel_err(a, b, scale=torch.tensor([10.0])) == 0.1
    assert rel_err(torch.zeros(2), torch.zeros(2)) == 0.0


def test_term_magnitudes_is_the_sum_of_absolute_terms_of_a_cancelling_reduction():
    """y = λ·(x·v) (one output per row): ∂L/∂λ = Σ t_i (x_i·v); the sum of |terms| is Σ|t_i||x_i·v|."""
    class Scaled:
        @staticmethod
        def forward(x, w, b, state, cfg):
            return state["lam"] * (x.double() @ w.double().t())
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(1, 3, generator=g, dtype=torch.float64)
    t = torch.randn(50, 1, generator=g, dtype=torch.float64)
    state = {"lam": torch.tensor([2.0], dtype=torch.float64)}
    S = term_magnitudes(Scaled, x, w, None, state, {}, t, ["lam"])["lam"]
    assert torch.allclose(S, (t.abs() * (x @ w.t()).abs()).sum().reshape(1))
    big = {"lam": torch.ones(9, dtype=torch.float64)}
    assert term_magnitudes(Scaled, x, w, None, big, {}, t, ["lam"]) == {}  # only small tensors


def test_formulas_can_be_evaluated_in_the_run_precision():
    lora = paper.get("lora")
    g = torch.Generator().manual_seed(0)
    W, A, B = (torch.randn(s, generator=g) for s in ((6, 5), (2, 5), (6, 2)))
    x = torch.randn(4, 5, generator=g)
    cfg = {"r": 2, "alpha": 4.0}
    y64 = lora.forward(x, W, None, {"A": A, "B": B}, cfg)
    with paper.evaluated_in(torch.float32):
        y32 = lora.forward(x, W, None, {"A": A, "B": B}, cfg)
    assert y64.dtype == torch.float64 and y32.dtype == torch.float32
    assert 0 < rel_err(y32, y64) < 1e-6
    assert paper.compute_dtype() == torch.float64  # restored


class _SlightlyOffLora(Lora):
    """s·(1 + 1e-4): far below anything a fixed "loose" tolerance would see, far above float32 rounding."""

    @staticmethod
    def scale(cfg, r):
        return Lora.scale(cfg, r) * (1 + 1e-4)


def _paper_parity_rows(variant_cls, dtype="float32", seed=0):
    cell = Cell(get("lora"), variant_cls, "qwen2", dtype, seed=seed)
    return {r.metric: r for r in runner.run_cell(cell, ["paper_parity"])}


def test_float32_parity_resolves_a_1e4_relative_scale_error():
    good, bad = _paper_parity_rows(variants.REGISTRY["lora"]), _paper_parity_rows(_SlightlyOffLora)
    assert all(r.status == "pass" for r in good.values()), good
    assert good["output_rel_err"].tolerance < 1e-5  # follows float32 rounding, not a loose constant
    assert bad["output_rel_err"].status == "fail"
    assert bad["grad_rel_err[B]"].status == "fail"


def test_bfloat16_tolerance_is_wider_than_float32_by_the_precision():
    t32 = _paper_parity_rows(variants.REGISTRY["lora"], "float32")["output_rel_err"].tolerance
    t16 = _paper_parity_rows(variants.REGISTRY["lora"], "bfloat16")["output_rel_err"].tolerance
    assert t16 / t32 > 1e3


def test_checkpoints_follow_the_umask(tmp_path):
    import os

    from audit import models
    m = models.build("mlp")
    variants.attach(m, variants.config("lora", r=2))
    old = os.umask(0o027)
    try:
        path = variants.save(m, tmp_path / "a.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob("*.tmp"))


class _FrozenBLora(Lora):
    """B is used detached: the optimiser holds it, but it never learns (a wiring bug)."""

    def forward(self, layer, x, y):
        h = x.to(layer.adapter_A.dtype) @ layer.adapter_A.t()
        return y + (self.scale(self.cfg, layer.adapter_rank) * h @ layer.adapter_B.detach().t()).to(y.dtype)


def test_training_is_judged_against_the_reference_curve():
    def rows(cls):
        cell = Cell(get("lora"), cls, "qwen2", "float32", seed=0)
        return {r.metric: r for r in runner.run_cell(cell, ["training"])}
    good, bad = rows(variants.REGISTRY["lora"]), rows(_FrozenBLora)
    assert good["loss_drop_diff_vs_reference"].status == "pass"
    assert good["loss_drop_diff_vs_reference"].margin < 0.01  # same start, same data: the same curve in fp32
    assert bad["loss_drop_diff_vs_reference"].status == "fail"
