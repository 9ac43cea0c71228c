"""The side-by-side Adam trajectory (peft_parity / lycoris_parity): it catches what only shows once the
optimiser has stepped, and rounding-level gradient differences stay rounding-level along it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from audit.cards import get
from audit.cell import Cell
from audit.checks import lycoris_parity, peft_parity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from patchlib_driver import PatchlibDriver  # noqa: E402

TRAJECTORY = ("trajectory_logits_rel_err", "trajectory_state_rel_err")


class OptimiserGetsCopies(PatchlibDriver):
    """patchlib, but the tensors handed to the optimiser are copies of the ones its forward uses (as a
    library keeping float32 master copies that are never written back): every step-0 quantity is right."""

    def external_parameters(self, model):
        return [p.detach().clone().requires_grad_() for p in super().external_parameters(model)]


def _rows(subject, check=peft_parity, variant="lora", model="mlp", seed=0) -> dict:
    cell = Cell(get(variant), subject, model, "float32", seed=seed)  # the card's main config
    cell.check = check.__name__.rsplit(".", 1)[-1]
    check.run(cell)
    return {r.metric: r for r in cell.rows}


@pytest.mark.parametrize("subject,bad", [(PatchlibDriver(), set()), (OptimiserGetsCopies(), set(TRAJECTORY))])
def test_an_optimiser_stepping_other_tensors_fails_the_trajectory_only(subject, bad):
    rows = _rows(subject)
    failed = {m for m, r in rows.items() if r.status != "pass"}
    assert failed == bad, {m: (r.status, r.value, r.tolerance) for m, r in rows.items()}
    assert "logits_rel_err" in rows and any(m.startswith("grad_rel_err") for m in rows)


def test_adam_eps_follows_the_gradient_scale():
    """Adam's ε is the truth's gradient RMS (peft_parity.EPS_REL): the trajectory row says which it used, and
    a tiny gradient element's rounding (relative error u·G/|g|) moves the state at rounding level only."""
    rows = _rows(PatchlibDriver())
    assert "ε" in rows["trajectory_logits_rel_err"].message
    g = torch.tensor([1e-3, -2e-3, 4e-8, 5e-4], dtype=torch.float64)
    noisy = g + torch.tensor([0.0, 0.0, 6e-11, 0.0], dtype=torch.float64)  # u·G on the cancelling element
    eps = peft_parity.EPS_REL * float(g.pow(2).mean().sqrt())

    def step(grad):
        p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([p], lr=peft_parity.LR, eps=eps)
        p.grad = grad.clone()
        opt.step()
        return p.detach()
    moved = (step(noisy) - step(g)).norm() / step(g).norm()
    assert moved < 1e-7  # rounding level; with torch's ε = 1e-8 the same element moves the state by ~1e-4


def test_a_correct_loha_is_not_failed_by_a_cancelling_gradient_element():
    """Seed 4, qwen2: one element of the v_proj w2_b gradient sums to 4e-8 against terms of 1e-3, so ours
    and LyCORIS round it 1e-3 apart (both correct); with torch's ε Adam turned that into a state error 8×
    the reference's spread. Both implementations are the paper's LoHa: the trajectory must pass."""
    pytest.importorskip("lycoris", reason="LyCORIS (the audit extra) is not installed")
    from audit.subjects.ours import Ours
    assert get("loha").config_id == "alpha8-r4"
    rows = _rows(Ours(), lycoris_parity, "loha", "qwen2", seed=4)
    assert {rows[m].status for m in TRAJECTORY} == {"pass"}, {m: (rows[m].value, rows[m].tolerance) for m in TRAJECTORY}
