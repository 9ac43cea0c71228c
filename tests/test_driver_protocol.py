"""The driver protocol's declarations (docs/drivers.md), each exercised by a small subject: transforms
with parameters, merge semantics, config corners on a model the subject can attach to, calibration
offered where the method can use it, and resolved targets."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import variants
from audit import models, runner
from audit.cards import ConfigCase, get
from audit.checks import merge
from audit.cell import Cell
from audit.roles import resolve_targets
from audit.subjects.ours import Ours
from audit.subjects.transforms import Affine, Diagonal, PackedSkew, SkewPart


# -- transforms: read, write back, and the gradient as the stored tensor shows it ------------------------

@pytest.mark.parametrize("transform,shape", [(Affine(2.0, 1.0), (3, 4)), (Diagonal(), (2, 4, 4)),
                                             (SkewPart(0.5), (2, 3, 3)), (PackedSkew(), (2, 3, 3))])
def test_a_transform_writes_what_it_reads_and_maps_gradients_by_the_chain_rule(transform, shape):
    g = torch.Generator().manual_seed(0)
    stored = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    canonical = transform.read(stored, None)
    other = torch.empty_like(stored.detach())
    transform.write(other, canonical.detach())
    assert torch.allclose(transform.read(other, None), canonical.detach(), atol=1e-12)
    # a loss of the canonical tensor: the stored tensor's gradient, mapped, equals the canonical gradient
    # (projected where the stored tensor carries more entries than the canonical one uses)
    weight = torch.randn(canonical.shape, generator=g, dtype=torch.float64)
    (canonical * weight).sum().backward()
    want = transform.project(weight)
    got = transform.grad(stored.grad, None)
    assert torch.allclose(got, want, atol=1e-12), type(transform).__name__


# -- merge semantics ----------------------------------------------------------------------------------------

class StateDictMerge(Ours):
    """Ours, merging the way a library that only writes a merged state dict does (no unmerge)."""

    merge_semantics = "state_dict"

    def merge(self, model):
        copy = models.clone(model)
        variants.merge(copy)  # the base model's own names, now holding the merged tensors (no adapter keys)
        adapter = set(variants.named_adapter_parameters(copy))
        return {k: v for k, v in copy.state_dict().items() if k not in adapter}

    def unmerge(self, model):
        raise AssertionError("a state-dict merge has no unmerge: the check must not call it")


class MergeOnEval(Ours):
    """Ours, merging when the model goes to eval() and unmerging on train(), as some libraries do."""

    merge_semantics = "on_eval"

    def attach(self, model, method, cfg, calibration, targets=None):
        model = super().attach(model, method, cfg, calibration)
        plain_train = model.train

        def train(mode: bool = True):
            st = variants.state_of(model)
            if mode and st.merged:
                variants.unmerge(model)
            plain_train(mode)
            if not mode and not st.merged:
                variants.merge(model)
            return model
        object.__setattr__(model, "train", train)
        return model


@pytest.mark.parametrize("subject,kind", [(StateDictMerge, "state_dict"), (MergeOnEval, "on_eval")])
def test_merge_semantics_are_audited_as_declared(subject, kind):
    cell = Cell(get("lora"), subject(), "qwen2", "float32")
    cell.check = "merge"
    merge.run(cell)
    rows = {r.metric: r for r in cell.rows}
    assert rows["merged_vs_unmerged_logits_rel_err"].status == "pass"
    assert rows["merged_weight_rel_err_vs_paper"].status == "pass" and kind in rows[
        "merged_vs_unmerged_logits_rel_err"].message
    if kind == "state_dict":
        assert {rows[m].status for m in ("merge_twice", "unmerge_weight_rel_err")} == {"n/a"}
    else:
        assert rows["merge_twice"].status == "pass" and rows["unmerge_weight_rel_err"].status == "pass"


# -- where config corners run, and calibration offered --------------------------------------------------------

class NoToyMLP(Ours):
    models = ("qwen3", "llama")


def test_a_corner_moves_to_a_model_the_subject_can_attach_to():
    case = ConfigCase("corner", {"alpha": 4.0}, "why")  # the default: the toy MLP
    assert runner.case_models(case, Ours(), ["mlp", "qwen3"]) == ("mlp",)
    assert runner.case_models(case, NoToyMLP(), ["mlp", "gpt2", "llama", "qwen3"]) == ("llama",)
    assert runner.case_models(replace(case, models=None), NoToyMLP(), ["mlp"]) is None


class Library(Ours):
    kind = "third-party"


def test_calibration_is_offered_where_the_method_can_use_it():
    card = replace(get("lora"), accepts_calibration=True)
    assert Cell(card, Library(), "mlp", "float32").needs_calibration()
    assert not Cell(card, Ours(), "mlp", "float32").needs_calibration()  # ours takes it only where it needs it
    assert not Cell(get("lora"), Library(), "mlp", "float32").needs_calibration()


# -- resolved targets ---------------------------------------------------------------------------------------

def test_targets_are_resolved_for_the_model_at_hand():
    gpt2 = resolve_targets(models.build("gpt2"), {"target_roles": ("o", "down")})
    assert {n: (t.roles, t.kind, t.shape) for n, t in gpt2.items()} == {
        "transformer.h.0.attn.c_proj": (("o",), "Conv1D", (64, 64)),
        "transformer.h.0.mlp.c_proj": (("down",), "Conv1D", (64, 96))}
    phi3 = resolve_targets(models.build("phi3"), {"target_roles": ("k",)})
    assert [(t.roles, t.fused) for t in phi3.values()] == [(("q", "k", "v"), True)]
    named = resolve_targets(models.build("mlp"), {"target_names": (r"up_proj",), "layers": (1,)})
    assert list(named) == ["layers.1.up_proj"]


class StateDictWithoutTheDelta(StateDictMerge):
    """A state-dict merge that returns the base weights unchanged: the merge check must fail it."""

    def merge(self, model):
        copy = models.clone(model)
        variants.detach(copy)
        return copy.state_dict()


def test_a_state_dict_merge_that_drops_the_delta_fails():
    cell = Cell(get("lora"), StateDictWithoutTheDelta(), "qwen2", "float32")
    cell.check = "merge"
    merge.run(cell)
    rows = {r.metric: r for r in cell.rows}
    assert rows["merged_weight_rel_err_vs_paper"].status == "fail"
    assert rows["merged_vs_unmerged_logits_rel_err"].status == "fail"
