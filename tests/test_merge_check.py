"""The merge check both ways: merges and unmerges that are wrong while the forward is right are caught,
and a correct unmerge written differently (subtracting ΔW again, as peft does) passes in both dtypes."""
from __future__ import annotations

import pytest
import torch

import variants
from audit.cards import get
from audit.cell import Cell
from audit.runner import run_cell
from audit.subjects.ours import Ours


class _MergeAgainAdds(Ours):
    """A second merge adds ΔW a second time (no guard): peft's history."""

    def merge(self, model):
        st = variants.state_of(model)
        if not st.merged:
            return variants.merge(model)
        with torch.no_grad():
            for name, mod in st.targets.items():
                w0, b0 = st.merged[name]
                mod.weight.add_(mod.weight - w0)
                if b0 is not None:
                    mod.bias.add_(mod.bias - b0)
        return model


class _UnmergeForgetsBias(Ours):
    """Unmerge restores the weights but leaves the merged bias in place."""

    def unmerge(self, model):
        st = variants.state_of(model)
        merged_biases = {n: m.bias.detach().clone() for n, m in st.targets.items() if m.bias is not None}
        variants.unmerge(model)
        with torch.no_grad():
            for n, b in merged_biases.items():
                st.targets[n].bias.copy_(b)
        return model


class _UnmergeBySubtraction(Ours):
    """A correct unmerge without saved copies: W ← W_merged − ΔW, b ← b_merged − Δb, in the layer's dtype."""

    def unmerge(self, model):
        st = variants.state_of(model)
        with torch.no_grad():
            merged = {n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
                      for n, m in st.targets.items()}
            deltas = {n: (merged[n][0] - w0, None if b0 is None else merged[n][1] - b0)
                      for n, (w0, b0) in st.merged.items()}  # ΔW as the merge wrote it, rounded to the dtype
        variants.unmerge(model)
        with torch.no_grad():
            for n, m in st.targets.items():
                m.weight.copy_(merged[n][0] - deltas[n][0])
                if m.bias is not None:
                    m.bias.copy_(merged[n][1] - deltas[n][1])
        return model


def _rows(subject, card, model="qwen2", dtype="float32"):
    cell = Cell(get(card), subject, model, dtype, first_dtype="float32")
    return {r.metric: r for r in run_cell(cell, ["merge"])}


def test_ours_merges_exactly_and_refuses_a_second_merge():
    rows = _rows(Ours(), "ia3")
    assert all(r.status == "pass" for r in rows.values()), rows
    assert rows["unmerge_weight_rel_err"].value == 0 and rows["unmerge_bias_rel_err"].value == 0
    assert "refused" in rows["merge_twice"].message


def test_a_second_merge_that_adds_the_update_again_fails():
    rows = _rows(_MergeAgainAdds(), "lora")
    assert rows["merge_twice"].status == "fail" and "changed the outputs" in rows["merge_twice"].message


def test_an_unmerge_that_forgets_the_bias_fails():
    rows = _rows(_UnmergeForgetsBias(), "ia3")  # IA3 scales the bias: its merge changes it
    assert rows["unmerge_bias_rel_err"].status == "fail"
    assert rows["unmerge_weight_rel_err"].status == "pass"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("card", ["lora", "ia3", "road", "dora"])
def test_an_unmerge_by_subtraction_is_correct_code_written_differently(card, dtype):
    rows = _rows(_UnmergeBySubtraction(), card, dtype=dtype)
    assert all(r.status == "pass" for r in rows.values()), {k: (r.value, r.tolerance) for k, r in rows.items()}
