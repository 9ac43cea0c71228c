"""Verdict semantics: the verdict judges the subject; reference findings, not-audited runs, declared
magnitudes, and robustness judged on what was refused rather than on wording."""
from __future__ import annotations

import math

import pytest

from audit.cards import Deviation, get
from audit.checks.robustness import names_problem
from audit.rows import Row
from audit.runner import apply_deviations
from audit.verdict import describe, verdicts


def row(check="paper_parity", metric="output_rel_err", value=1e-7, tol=1e-6, status="pass", about="subject",
        **kw):
    return Row("v", check, "qwen3", "float32", metric, value, tol, status, about=about, **kw)


def test_all_pass_with_parity_is_conformant_with_margins():
    v = verdicts([row(), row("training", "loss_drop_diff_vs_reference", 0.1, 0.5)])["v"]
    assert v["verdict"] == "conformant" and v["confidence"] == "medium"
    assert math.isclose(v["check_margins"]["paper_parity"]["margin"], 0.1)
    assert math.isclose(v["check_margins"]["training"]["margin"], 0.2)


def test_reference_findings_never_decide_the_subjects_verdict():
    rows = [row(), row("peft_parity", "peft_layer_vs_paper_rel_err", 0.3, 1e-6, "fail", about="reference"),
            row("placement", "peft_default_targets_mismatch", 2, 0, "xfail", about="reference", deviation="d")]
    v = verdicts(rows)["v"]
    assert v["verdict"] == "conformant"
    assert {f["metric"] for f in v["reference_findings"]} == {"peft_layer_vs_paper_rel_err",
                                                              "peft_default_targets_mismatch"}
    assert v["counts"]["fail"] == 0


def test_partial_only_for_the_subjects_own_declared_deviation():
    v = verdicts([row(), row("properties", "angle", 0.5, 1e-6, "xfail", deviation="mine")])["v"]
    assert v["verdict"] == "partial" and v["deciding"] == ["properties"]


@pytest.mark.parametrize("rows,reason", [
    ([row(status="n/a", value=None, tol=None)], "no subject measurement"),
    ([row("training", "loss_drop_diff_vs_reference", 0.1, 0.5)], "no parity check"),
])
def test_nothing_judged_is_not_audited(rows, reason):
    v = verdicts(rows)["v"]
    assert v["verdict"] == "not audited" and v["confidence"] == "none"
    assert any(reason in r for r in v["reasons"])


def test_a_failure_still_fails_without_parity():
    assert verdicts([row("training", "nonfinite_steps", 1, 0, "fail", op="==")])["v"]["verdict"] == "non-conformant"


def test_an_xfail_covers_only_its_declared_magnitude():
    card = get("antipasto")
    dev = next(d for d in card.deviations if d.kind == "xfail")
    within = Row("antipasto", dev.check, "qwen3", "float32", dev.metric, dev.magnitude * 0.9, 1e-6, "fail")
    beyond = Row("antipasto", dev.check, "qwen3", "float32", dev.metric, dev.magnitude * 1.1, 1e-6, "fail")
    out = apply_deviations(card, [within, beyond])
    assert [r.status for r in out[:2]] == ["xfail", "fail"]
    assert "beyond the magnitude" in out[1].message


def test_every_xfail_states_its_magnitude():
    with pytest.raises(ValueError, match="magnitude"):
        Deviation("x", "properties", "m", "paper", "xfail", "r", "s")


def test_printed_values_never_look_equal_to_their_tolerance():
    text = describe(Row("v", "training", "m", "d", "loss", 0.9500001, 0.95, "fail"))
    value, tol = text.split(" = ")[1].split(" (needs <= ")
    assert value != tol.split(")")[0]


@pytest.mark.parametrize("message,fields,ok", [
    ("LoraConfig.r: must be a positive integer, got 0", {"r": 0}, True),
    ("rank 0 is not allowed", {"r": 0}, True),                           # names the value
    ("EVA needs calibration data", {"calibration_data": None}, True),    # words, not the identifier
    ("PissaConfig.use_rslora: PiSSA has no rsLoRA scale", {"use_rslora": True}, True),
    ("target_names ('^no_such_module$',) selects no layer", {"target_names": ("^no_such_module$",)}, True),
    ("invalid configuration", {"r": 0}, False),
    ("something went wrong in parser", {"r": 7}, False),  # 'r' inside a word does not count
])
def test_robustness_judges_what_the_message_names_not_its_wording(message, fields, ok):
    assert names_problem(message, fields) is ok


def test_coverage_says_how_much_a_verdict_rests_on():
    """A verdict judged on one corner config with the rest n/a says so: configs, models and dtypes with a
    judged row, out of those audited."""
    from audit.rows import Row
    from audit.verdict import coverage_text, verdicts
    rows = [Row("lora", "paper_parity", "mlp", "float32", "output_rel_err", 1e-7, 1e-6, "pass", config="corner"),
            Row("lora", "paper_parity", "qwen3", "float32", "-", None, None, "n/a", config="corner"),
            Row("lora", "paper_parity", "mlp", "bfloat16", "-", None, None, "n/a", config="main-cfg"),
            Row("lora", "paper_parity", "qwen3", "bfloat16", "-", None, None, "error", config="main-cfg")]
    v = verdicts(rows)["lora"]
    assert v["coverage"]["configs"] == {"judged": ["corner"], "of": ["corner", "main-cfg"]}
    assert v["coverage"]["dtypes"] == {"judged": ["float32"], "of": ["bfloat16", "float32"]}
    assert coverage_text(v["coverage"]) == ("judged on 1/2 configs (corner), 1/2 models (mlp), "
                                            "1/2 dtypes (float32)")
