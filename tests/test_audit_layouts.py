"""The audit on GPT-2 (Conv1D) and Phi-3 (fused projections): placement, peft's refusals, the
paper-merged model written through the canonical view, the fast model copy, dtype-independent checks."""
from __future__ import annotations

import torch

import variants
from audit import models, roles, runner
from audit.cards import get
from audit.cell import Cell
from audit.checks import paper_parity
from audit.subjects import from_spec
from audit.subjects.ours import Ours
from references import paper


def test_placement_reads_gpt2_and_phi3_roles_independently():
    gpt2, phi3 = models.build("gpt2", n_layers=2), models.build("phi3", n_layers=2)
    assert sorted(roles.expected_modules(gpt2, ("o",))) == [f"transformer.h.{i}.attn.c_proj" for i in (0, 1)]
    assert sorted(roles.expected_modules(gpt2, ("down",))) == [f"transformer.h.{i}.mlp.c_proj" for i in (0, 1)]
    assert sorted(roles.expected_modules(phi3, ("k", "v"))) == [f"model.layers.{i}.self_attn.qkv_proj" for i in (0, 1)]
    fused = roles.fused_beyond(roles.expected_modules(phi3, ("k", "v")), ("k", "v"))
    assert set(fused.values()) == {("q",)}


def test_ia3_placement_on_fused_models_names_what_the_fused_layer_adds():
    rows = runner.run(runner.Plan(runner.default_targets(["ia3"]), ["phi3", "gpt2"], ["float32"], ["placement"]),
                      progress=False)
    counts = {(r.model, r.metric): r for r in rows}
    for m in ("phi3", "gpt2"):
        assert counts[(m, "missing_targets")].value == 0 and counts[(m, "unexpected_targets")].value == 0
        assert "fused layers adapted as one" in counts[(m, "missing_targets")].message
        assert "(+q)" in counts[(m, "missing_targets")].message


def test_peft_refusing_conv1d_is_a_measured_declared_departure():
    rows = runner.run(runner.Plan(runner.default_targets(["hra"], "peft"), ["gpt2"], ["float32"],
                                  ["placement", "paper_parity"]), progress=False)
    place = [r for r in rows if r.check == "placement"]
    assert [(r.metric, r.status, r.deviation) for r in place] == [
        ("refused_target_fraction", "xfail", "peft-hra-linear-only")]
    assert "Conv1D" in place[0].message
    assert {r.status for r in rows if r.check == "paper_parity"} == {"n/a"}


def test_ours_on_gpt2_has_no_peft_twin_where_peft_refuses_conv1d():
    rows = runner.run(runner.Plan(runner.default_targets(["road"]), ["gpt2"], ["float32"], ["peft_parity"]),
                      progress=False)
    assert [r.status for r in rows] == ["n/a"] and "Conv1D" in rows[0].message


def test_merged_model_writes_the_paper_weight_in_the_layers_own_layout():
    """Each Conv1D's stored weight is the transpose of the paper's merged W: the merged model
    reproduces the hooked one (a write in the wrong layout would not even fit c_attn's shape)."""
    cell = Cell(get("dora"), Ours(), "gpt2", "float32")
    adapted = cell.adapted()
    from audit.state import perturb
    perturb(adapted, 0, cell.card.perturb)
    merged = paper_parity.merged_model(cell, adapted, paper.get("dora"), adapted.cfg)
    with torch.no_grad():
        a, b = cell.logits(adapted), cell.logits(merged)
    assert (a - b).abs().max() / a.abs().max() < 1e-5
    assert type(merged.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


def test_clone_is_a_deep_copy_that_keeps_ties_and_adapters_working():
    base = models.build("qwen3")
    ids = models.example_inputs(base)
    copy = models.clone(base)
    assert copy.config is not base.config and copy.model.config is copy.config  # one shared copy
    with torch.no_grad():
        y = models.logits(base, ids)
        assert torch.equal(models.logits(copy, ids), y)
        next(copy.parameters()).add_(1.0)
        assert torch.equal(models.logits(base, ids), y)  # independent weights
    adapted = variants.attach(models.build("llama"), variants.config("lora", r=2))
    twin = models.clone(adapted)
    st = variants.state_of(twin)
    assert all(st.targets[n] is twin.get_submodule(n) for n in st.targets)  # the state points into the copy
    with torch.no_grad():
        for p in variants.adapter_parameters(twin):
            p.add_(0.1)
        assert not torch.equal(models.logits(twin, ids), models.logits(adapted, ids))


def test_dtype_independent_checks_run_once_per_plan():
    rows = runner.run(runner.Plan(runner.default_targets(["lora"]), ["mlp"], ["float32", "bfloat16"],
                                  ["placement", "robustness", "identity_at_init"], only_configs=("main",)),
                      progress=False)
    by = {(r.check, r.dtype) for r in rows if r.status != "n/a"}
    assert ("placement", "float32") in by and ("placement", "bfloat16") not in by
    assert ("robustness", "float32") in by and ("robustness", "bfloat16") not in by
    assert ("identity_at_init", "bfloat16") in by
    skipped = [r for r in rows if r.dtype == "bfloat16" and r.check == "placement"]
    assert skipped and all("measured in float32" in r.message for r in skipped)
    only_bf16 = runner.run(runner.Plan(runner.default_targets(["lora"]), ["mlp"], ["bfloat16"], ["placement"],
                                       only_configs=("main",)), progress=False)
    assert {r.status for r in only_bf16} == {"pass"}


def test_peft_subject_sets_fan_in_fan_out_on_conv1d_models():
    peft = from_spec("peft")
    cfg = peft.peft_config(models.build("gpt2"), "lora", {"r": 2, "alpha": 4.0})
    assert cfg.fan_in_fan_out is True
    assert peft.peft_config(models.build("qwen2"), "lora", {"r": 2, "alpha": 4.0}).fan_in_fan_out is False


def test_the_ia3_report_says_which_roles_fused_layers_add(tmp_path):
    from audit import cli
    cli.main(["run", "--out", str(tmp_path), "--variants", "ia3", "--models", "phi3,qwen3", "--dtypes", "float32",
              "--checks", "placement", "--quiet", "--jobs", "1"])
    text = (tmp_path / "ia3.md").read_text()
    assert "**Fused layers.**" in text and "- phi3: beyond the k/v placement" in text and "qkv_proj (+q)" in text
    assert "- qwen3" not in text  # separate q/k/v projections: nothing fused


def test_progress_counts_undeclared_failures_only():
    """A declared departure (here peft's IA3 q/v default targets, a reference finding) is not
    'failing' on the progress line; an undeclared failure is."""
    import io

    from audit.rows import Row
    declared = Row("ia3", "placement", "qwen3", "float32", "peft_default_targets_mismatch", 2.0, 0.0, "fail",
                   reference="peft", about="reference")
    undeclared = Row("ia3", "paper_parity", "qwen3", "float32", "output_rel_err", 1.0, 1e-6, "fail")
    judged = runner.preview(get("ia3"), [declared, undeclared], "ours")
    assert [r.status for r in judged] == ["xfail", "fail"] and declared.status == "fail"  # copies judged
    bar = runner.Progress(2, stream=io.StringIO())
    bar.step("ia3 / qwen3", judged)
    assert bar.failing == 1


# -- a layout finding does not stop what can run without the canonical state ---------------------------------

def _oft_defaults_cell(subject):
    """peft's OFT at its own defaults on the MLP: the block size it picks is not the config's (a layout finding)."""
    from audit.cards import get
    from audit.cell import Cell
    card = get("oft")
    return Cell(card.at(next(c for c in card.cases() if c.id == "defaults")), subject, "mlp", "float32")


def test_a_layout_finding_still_merges_and_reloads_in_the_subjects_own_layout():
    from audit import runner
    from audit.subjects.peft import Peft
    rows = runner.run_cell(_oft_defaults_cell(Peft()), ["merge", "save_load"])
    assert [r.metric for r in rows if r.check == "layout"] == ["canonical_shape_mismatch"]
    merge = {r.metric: r for r in rows if r.check == "merge"}
    assert merge["merged_weight_rel_err_vs_paper"].status == "n/a"
    assert merge["merged_vs_unmerged_logits_rel_err"].status == "pass"
    assert "one rounding of the adapted layers' weights" in merge["merged_vs_unmerged_logits_rel_err"].message
    assert merge["unmerge_weight_rel_err"].status == "pass" and merge["unmerge_weight_rel_err"].value > 0  # not identity
    reload = {r.metric: r for r in rows if r.check == "save_load"}
    assert reload["logits_max_abs_diff"].status == "pass"
    assert "by name" in reload["adapter_tensors_max_abs_diff"].message


def test_a_broken_merge_shows_through_a_layout_finding():
    """The same cell with a merge that leaves the weights 1% off: the merge row fails, layout or not."""
    import torch

    from audit import runner
    from audit.subjects.peft import Peft

    class SloppyMerge(Peft):
        def merge(self, model):
            out = super().merge(model)
            with torch.no_grad():
                for name, module in model.named_modules():
                    if name.endswith("up_proj.base_layer"):
                        module.weight.mul_(1.01)
            return out
    rows = runner.run_cell(_oft_defaults_cell(SloppyMerge()), ["merge"])
    merge = {r.metric: r for r in rows if r.check == "merge"}
    assert merge["merged_vs_unmerged_logits_rel_err"].status == "fail"
