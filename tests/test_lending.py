"""A cell lends one adapted model (and copies of the base) to its checks in turn instead of attaching a
fresh one per check: a lent model must come back exactly as a fresh attach gives it, a structural
change must get it replaced, and no audit row may change because of the lending."""
from __future__ import annotations

import pytest
import torch

import variants
from audit import cell as cell_module
from audit.cards import get
from audit.cell import Cell
from audit.checks import CHECK_ORDER
from audit.runner import run_cell
from audit.state import perturb
from audit.subjects.ours import Ours
from variants._runtime import STATE_ATTR


def _fresh(cell: Cell, perturbed: bool):
    adapted = cell.adapted()
    if perturbed:
        perturb(adapted, cell.seed, cell.card.perturb)
    return adapted


def _assert_same_model(a, b):
    sa, sb = a.state(with_weight=True), b.state(with_weight=True)
    assert sa.keys() == sb.keys()
    for n in sa:
        for k in sa[n]:
            assert torch.equal(sa[n][k], sb[n][k]), (n, k)
    for (na, pa), (nb, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb) and pa.requires_grad == pb.requires_grad and pa.grad is None, na
    assert [m.training for m in a.model.modules()] == [m.training for m in b.model.modules()]


@pytest.mark.parametrize("perturbed", [False, True])
def test_a_lent_model_comes_back_as_a_fresh_attach_gives_it(perturbed):
    """Values, gradients, requires_grad flags and training modes a check changed are put back."""
    cell = Cell(get("vera"), Ours(), "mlp", "float32")
    with cell.shared(perturbed=perturbed) as a:
        model = a.model
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        for b in model.buffers():
            b.mul_(2.0)  # VeRA's frozen shared projections are buffers
        model.get_input_embeddings().weight.requires_grad_(True)
        model.train()
        model(torch.zeros(1, 3, dtype=torch.long)).sum().backward()
        torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    with cell.shared(perturbed=perturbed) as again:
        assert again is a  # lent again, not attached again
        _assert_same_model(again, _fresh(cell, perturbed))


def test_a_structural_change_gets_the_lent_model_replaced():
    """A hook left behind (or a tensor added, an attribute set) cannot be undone by restoring values:
    the next borrower gets a fresh model."""
    cell = Cell(get("lora"), Ours(), "mlp", "float32")
    with cell.shared() as a:
        a.layers[a.names[0]].register_forward_hook(lambda m, args, out: out * 0)
    with cell.shared() as b:
        assert b is not a
        fresh = _fresh(cell, False)
        assert len(b.layers[b.names[0]]._forward_hooks) == len(fresh.layers[fresh.names[0]]._forward_hooks)
        _assert_same_model(b, fresh)
    with cell.shared() as c:
        assert c is b  # unchanged this time: lent again


def test_a_base_copy_an_attach_changed_is_not_lent_again():
    """Robustness lends one base copy to every bad config: one that was wrongly accepted (the attach
    changed the model) must not leave the next attempt an already-adapted model."""
    cell = Cell(get("lora"), Ours(), "mlp", "float32")
    with cell.lent_base(purpose="refusals") as m:
        variants.attach(m, variants.config("lora", r=2))
    with cell.lent_base(purpose="refusals") as m2:
        assert m2 is not m and getattr(m2, STATE_ATTR, None) is None
        variants.attach(m2, variants.config("lora", r=2))  # a clean model takes an attach


@pytest.mark.parametrize("card", ["lora", "vera", "delora", "pissa", "oft", "adalora"])
def test_lending_changes_no_audit_row(card, monkeypatch):
    """Every row of every check (but timing) is the same whether the checks share the lent models or
    each gets a fresh attach."""
    checks = [c for c in CHECK_ORDER if c != "timing"]

    def rows():
        cell = Cell(get(card), Ours(), "mlp", "float32", first_dtype="float32")
        return [(r.check, r.metric, r.value, r.tolerance, r.status, r.message) for r in run_cell(cell, checks)]
    shared = rows()
    monkeypatch.setattr(cell_module._Lent, "restore", lambda self: False)  # never lent twice
    assert rows() == shared
    assert any(r[0] == "peft_parity" and r[4] == "pass" for r in shared)  # the rows compared are measurements


def test_a_model_lent_without_keep_is_never_lent_again():
    """The merge check borrows with keep=False: whatever a merge leaves behind (bookkeeping a value
    restore cannot see) goes with the model."""
    cell = Cell(get("lora"), Ours(), "mlp", "float32")
    with cell.shared(perturbed=True, keep=False) as a:
        variants.merge(a.model)
    with cell.shared(perturbed=True) as b:
        assert b is not a and not variants.is_merged(b.model)
        _assert_same_model(b, _fresh(cell, True))
