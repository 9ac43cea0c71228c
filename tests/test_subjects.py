"""Subjects: the peft subject's rows come from peft's own code paths (a planted bug in peft's init,
forward or save shows up), layouts the formula cannot read are failing findings naming the tensor, and declared
deviations follow who departs (peft's apply to peft as the subject, not to ours)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import variants
from audit import run_plan, runner
from audit.cards import get
from audit.rows import Row
from audit.runner import apply_deviations
from audit.subjects import Adapted, ShapeMismatch, from_spec
from audit.subjects.ours import Ours

FAST = dict(models=["mlp"], dtypes=["float32"])


def audit(subject, card: str, checks: list[str], models=("mlp",)) -> list[Row]:
    plan = runner.Plan([runner.Target(get(card), subject, getattr(subject, "label", ""))], list(models),
                       ["float32"], checks, only_configs=("main",))
    return runner.run(plan, progress=False)


def by_metric(rows, check):
    return {r.metric: r for r in rows if r.check == check}


# -- the peft subject runs peft's own code ----------------------------------------------------------

def test_peft_subject_is_peft_itself_and_passes_identity_and_parity():
    rows = audit(from_spec("peft"), "lora", ["identity_at_init", "paper_parity", "peft_parity"])
    assert all(r.status == "pass" for r in rows), [r for r in rows if r.status != "pass"]
    assert {r.reference for r in rows if r.check == "peft_parity"} == {"ours"}  # the other implementation


def test_a_planted_bug_in_peft_init_shows_up(monkeypatch):
    """peft's LoRA init with a random B (instead of 0): identity at init must fail for the peft subject."""
    from peft.tuners.lora.layer import LoraLayer
    original = LoraLayer.reset_lora_parameters

    def random_b(self, adapter_name, init_lora_weights):
        original(self, adapter_name, init_lora_weights)
        with torch.no_grad():
            self.lora_B[adapter_name].weight.normal_(0, 0.5)
    monkeypatch.setattr(LoraLayer, "reset_lora_parameters", random_b)
    rows = audit(from_spec("peft"), "lora", ["identity_at_init", "grad_flow"])
    ident = by_metric(rows, "identity_at_init")
    assert ident["logits_rel_err"].status == "fail" and ident["logits_rel_err"].value > 1e-3
    assert by_metric(rows, "grad_flow")["dead_fraction[A]"].status == "fail"  # A is no longer dead at step 0


def test_a_planted_bug_in_peft_forward_shows_up(monkeypatch):
    """peft's LoRA scaling forgotten in the forward: paper parity fails for the peft subject."""
    from peft.tuners.lora import layer
    monkeypatch.setattr(layer.LoraLayer, "update_layer", _doubling(layer.LoraLayer.update_layer))
    rows = audit(from_spec("peft"), "lora", ["paper_parity"])
    assert by_metric(rows, "paper_parity")["output_rel_err"].status == "fail"


def _doubling(update_layer):
    def wrapped(self, adapter_name, *args, **kwargs):
        out = update_layer(self, adapter_name, *args, **kwargs)
        self.scaling[adapter_name] *= 2  # s = 2·alpha/r: the kind of scale bug peft once shipped
        return out
    return wrapped


def test_a_planted_bug_in_peft_save_shows_up(monkeypatch):
    """save_pretrained that drops lora_B: the reloaded model differs, save_load fails."""
    import peft.peft_model as pm
    original = pm.get_peft_model_state_dict

    def lossy(*args, **kwargs):
        return {k: v for k, v in original(*args, **kwargs).items() if "lora_B" not in k}
    monkeypatch.setattr(pm, "get_peft_model_state_dict", lossy)
    rows = audit(from_spec("peft"), "lora", ["save_load"])
    assert by_metric(rows, "save_load")["logits_max_abs_diff"].status == "fail"


def test_peft_subject_default_variants_are_the_peft_methods():
    args = SimpleNamespace(impl=None, subject="peft", card=None, variants=None)
    targets = run_plan.resolve_targets(args)
    assert sorted(t.card.name for t in targets) == sorted(
        ["lora", "pissa", "dora", "ia3", "ia3_ff", "hra", "delora", "eva", "road",
         "oft", "lokr", "loha", "vera", "adalora", "olora", "miss", "hira", "boft", "corda", "loraga",
         "fourierft", "c3a", "shira", "vblora", "randlora"])  # every card but antipasto (no peft method)
    assert all(t.subject.kind == "peft" and t.spec == "peft" for t in targets)


def test_a_method_the_subject_lacks_is_not_audited_with_the_reason():
    rows = audit(from_spec("peft"), "antipasto", ["identity_at_init", "paper_parity"])
    assert rows and all(r.status == "n/a" and "peft has no" in r.message for r in rows)


# -- layouts the formula cannot read are failing findings; checks that need no state still run ----------

class DropsMagnitude(Ours):
    """Our runtime, but its name map forgets DoRA's magnitude vector m."""

    def layer_tensors(self, layer, method):
        return {k: v for k, v in super().layer_tensors(layer, method).items() if k != "m"}


def test_a_tensor_the_formula_needs_and_the_subject_lacks_is_a_failing_finding():
    """DoRA without its magnitude: one failing layout row naming m ("no 'm'"), the checks that read the
    canonical state n/a with that reason, and the one that reads only outputs (identity) still judged."""
    rows = audit(DropsMagnitude(label="drops m"), "dora", ["identity_at_init", "grad_flow", "paper_parity"])
    layout = [r for r in rows if r.check == "layout"]
    assert [(r.metric, r.status) for r in layout] == [("missing_tensor[m]", "fail")]
    assert "no 'm'" in layout[0].message and "KeyError" not in layout[0].message
    assert not [r for r in rows if r.status == "error"]
    assert {r.status for r in rows if r.check in ("grad_flow", "paper_parity")} == {"n/a"}
    assert all("'m'" in r.message for r in rows if r.check in ("grad_flow", "paper_parity"))
    assert {r.status for r in rows if r.check == "identity_at_init"} == {"pass"}


def test_layout_shapes_are_checked_with_a_transpose_hint():
    model = torch.nn.Sequential(torch.nn.Linear(8, 6))
    variants.attach(model, variants.config("lora", r=2, target_names=("0",)))

    handle = Adapted(TransposedB(), model, "lora", variants.state_of(model).cfg.to_dict())
    with pytest.raises(ShapeMismatch, match=r"'B'.*\(transpose\?\)"):
        handle.state()


class TransposedB(Ours):
    """Our runtime, but B handed over transposed: the subject's tensor has the wrong shape."""

    def layer_tensors(self, layer, method):
        out = super().layer_tensors(layer, method)
        t, _, where = out["B"]
        return {**out, "B": (t.t(), "identity", where)}


def test_a_tensor_of_the_wrong_shape_is_one_failing_layout_row():
    """A shape the paper's layout does not give (peft's OLoRA factors of the un-transposed Conv1D weight)
    is a finding about the subject: one failing row a card can declare; checks that need the canonical
    state are n/a, the identity (outputs only) is still judged."""
    rows = audit(TransposedB(label="B transposed"), "lora", ["identity_at_init", "grad_flow"])
    bad = [r for r in rows if r.status not in ("n/a", "pass")]
    assert len(bad) == 1 and bad[0].check == "layout" and bad[0].status == "fail"
    assert bad[0].metric == "canonical_shape_mismatch" and "'B'" in bad[0].message
    assert {r.status for r in rows if r.check == "grad_flow"} == {"n/a"}
    assert {r.status for r in rows if r.check == "identity_at_init"} == {"pass"}


# -- deviations follow who departs ----------------------------------------------------------------------

def _rows():
    """DeLoRA's A dead at step 0 (peft's B = 0 init), as grad_flow reports it."""
    return [Row("delora", "grad_flow", "mlp", "float32", "dead_fraction[A]", 1.0, 0.0, "fail", op="<="),
            Row("delora", "grad_flow", "mlp", "float32", "grad_norm_min[A]", 0.0, 0.0, "fail", op=">")]


def _peft_dead_a_card():
    """DeLoRA with peft-only deviations for A's dead gradient (as the card declared them before the
    config axes made it a claim of the peft-init config)."""
    from dataclasses import replace

    from audit.cards import Deviation
    devs = tuple(Deviation(f"peft-dead-A{sfx}", "grad_flow", metric, "peft", "xfail", "B = 0 at init", "peft",
                           magnitude=mag, subjects=("peft",))
                 for sfx, metric, mag in (("", "grad_norm_min[A]", 0.0), ("-share", "dead_fraction[A]", 1.0)))
    return replace(get("delora"), deviations=devs)


@pytest.mark.parametrize("kind,expected", [("peft", "xfail"), ("ours", "fail"), ("third-party", "fail")])
def test_a_peft_deviation_applies_only_when_peft_is_the_subject(kind, expected):
    rows = apply_deviations(_peft_dead_a_card(), _rows(), kind)
    assert [r.status for r in rows[:2]] == [expected, expected]
    assert not [r for r in rows if r.status == "error"]  # a peft-only deviation is not required of others
