"""The init check: the subject's own initial state against the paper's statement (references/paper)."""
from __future__ import annotations

import pytest
import torch

from audit.cards import get
from audit.cell import Cell
from audit.checks import init
from audit.subjects.ours import Ours
from variants.lora import Lora


def test_ks_statistic_accepts_a_uniform_draw_and_rejects_a_shifted_one():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4000, generator=g, dtype=torch.float64)
    assert init.ks_uniform(u) < init.ks_critical(u.numel())
    assert init.ks_uniform(u * 0.8) > init.ks_critical(u.numel())
    assert init.ks_critical(100) > init.ks_critical(10000)


def _rows(card: str, impl=None, model="qwen2", dtype="float32", **fields):
    from dataclasses import replace
    c = get(card)
    c = replace(c, config={**c.config, **fields})
    cell = Cell(c, Ours(impl), model, dtype)
    cell.check = "init"
    init.run(cell)
    return {r.metric: r for r in cell.rows}


@pytest.mark.parametrize("card", ["lora", "pissa", "dora", "eva", "delora", "hra", "road", "antipasto", "ia3"])
def test_our_init_meets_the_paper_statement(card):
    rows = _rows(card)
    subject = [r for r in rows.values() if r.about == "subject"]
    assert subject and all(r.status == "pass" for r in subject), [(r.metric, r.value, r.tolerance) for r in subject]


def test_peft_init_is_a_second_reference_in_float32():
    rows = _rows("pissa")
    assert {"peft_A_gram_balanced", "peft_principal_part"} <= set(rows)
    assert all(r.about == "reference" and r.reference == "peft" for m, r in rows.items() if m.startswith("peft_"))
    assert not any(m.startswith("peft_") for m in _rows("pissa", dtype="bfloat16"))


def test_a_wrong_lora_init_is_caught():
    class WideA(Lora):
        def init(self, layer, cfg, gen):
            super().init(layer, cfg, gen)
            layer.adapter_A.mul_(3.0)  # U(±3/√d_in): the right shape, the wrong spread

    class RandomB(Lora):
        def init(self, layer, cfg, gen):
            super().init(layer, cfg, gen)
            layer.adapter_B.normal_(generator=gen)

    wide = _rows("lora", WideA)  # neither peft's kaiming-uniform nor a Gaussian of any σ (the paper's)
    assert any(r.status == "fail" for m, r in wide.items() if m.startswith("A_draw"))
    assert _rows("lora", RandomB)["B_max_abs"].status == "fail"


def test_every_allowed_a_draw_is_accepted_and_named():
    """The paper's Gaussian A (any σ) and peft's kaiming-uniform A both meet the LoRA statement; the rows
    say which one the subject took."""
    class GaussianA(Lora):
        def init(self, layer, cfg, gen):
            super().init(layer, cfg, gen)
            layer.adapter_A.normal_(0.0, 0.02, generator=gen)

    for impl, family in ((None, "kaiming_uniform"), (GaussianA, "gaussian")):
        rows = _rows("lora", impl)
        assert all(r.status == "pass" for r in rows.values() if r.about == "subject"), family
        assert {r.choice for r in rows.values() if r.about == "subject"} == {f"A_draw={family}"}


def test_dora_magnitude_on_the_wrong_axis_is_caught():
    from variants.dora import Dora

    class ColumnNorm(Dora):
        def init(self, layer, cfg, gen):
            super().init(layer, cfg, gen)
            w = layer.weight.float()
            n = w.norm(dim=0)
            layer.adapter_m.copy_(torch.nn.functional.pad(n, (0, max(0, w.shape[0] - n.numel())))[: w.shape[0]])

    assert _rows("dora", ColumnNorm, model="mlp")["m_row_norm"].status == "fail"
