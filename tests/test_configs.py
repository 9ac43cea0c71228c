"""Config axes: every card audits the configs that matter, each its own cell with its id on every row."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

import variants
from audit import cli, gate, runner
from audit.cards import CARDS, ConfigCase, Deviation, ZeroGrad, get
from audit.rows import Row

AXES = {"lora": {"alpha", "use_rslora"}, "dora": {"alpha", "use_rslora"}, "pissa": {"alpha"}, "eva": {"rho", "alpha"},
        "delora": {"init_style", "lambda0"}, "road": {"road_variant"}, "antipasto": {"rotate_basis", "block_size"},
        "hra": {"r"}}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_every_card_with_axes_audits_at_least_three_configs(name):
    card = get(name)
    cases = card.cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), ids
    if name in AXES:
        assert len(cases) >= 3, ids
        varied = {k for c in cases for k in c.fields} | ({"r"} if any(c.subject_defaults for c in cases) else set())
        assert AXES[name] <= varied | set(card.config), (name, varied)
    schema = variants.REGISTRY[name].Config
    for case in cases:  # every config is one our schema accepts (a typo would only show at run time)
        if not case.subject_defaults:
            schema(**{**card.config, **case.fields})
        assert case.why


def test_the_axes_the_issue_names_are_present():
    assert get("lora").at("rslora").config["use_rslora"] is True
    assert get("lora").at("alpha-eq-r").config["alpha"] == get("lora").config["r"]
    assert get("lora").config["alpha"] != get("lora").config["r"]
    assert {get("road").at(c).config["road_variant"] for c in ("road_1", "road_2", "road_4")} == {"road_1", "road_2", "road_4"}
    assert {get("antipasto").at(c.id).config["rotate_basis"] for c in get("antipasto").cases()} == {"V", "U", "none"}
    assert get("pissa").at("alpha-ne-r").config["alpha"] != get("pissa").config["r"]
    assert {get("delora").at(c).config["init_style"] for c in ("paper", "peft-init")} == {"paper", "peft"}
    assert all(get("delora").at(c.id).config["lambda0"] > 0 for c in get("delora").cases())
    assert get("eva").at("rho2").config["rho"] == 2.0


def test_claims_follow_the_config():
    """DeLoRA under peft's init has a dead A by design; under the paper's it does not."""
    delora = get("delora")
    assert set(delora.zero_grads_at(delora.at("paper").config)) == {"lam"}
    assert set(delora.zero_grads_at(delora.at("peft-init").config)) == {"lam", "A"}
    road4 = get("road").at("road_4")
    assert road4.zero_grads["theta"].stays_zero and road4.zero_grads["theta"].fraction == 0.5
    assert get("road").at("road_2").zero_grads == {}
    bs4 = [d.id for d in get("antipasto").at("rotate-V").deviations]
    assert "antipasto-angle-bound-bs4" in bs4
    assert "antipasto-angle-bound-bs4" not in [d.id for d in get("antipasto").at("block2").deviations]


def test_deviations_are_judged_per_config():
    """A deviation declared for one config turns that config's failing row into xfail, and the same
    failure under another config stays a failure."""
    from dataclasses import replace
    dev = Deviation("only-rslora", "paper_parity", "output_rel_err", "paper", "xfail", "r", "s", magnitude=1.0,
                    configs=("rslora",))
    card = replace(get("lora"), deviations=(dev,))
    rows = [Row("lora", "paper_parity", "qwen2", "float32", "output_rel_err", 0.5, 1e-6, "fail", config=c)
            for c in ("rslora", "alpha8-r4")]
    out = runner.apply_deviations(card, rows)
    by = {r.config: r.status for r in out if r.metric == "output_rel_err"}
    assert by == {"rslora": "xfail", "alpha8-r4": "fail"}


def test_a_corner_config_runs_only_where_its_case_says(tmp_path):
    case = ConfigCase("tiny", {"alpha": 2.0}, "test", models=("mlp",), dtypes=("float32",), checks=("identity_at_init",))
    plan = runner.Plan(runner.default_targets(["lora"]), ["mlp"], ["float32", "bfloat16"], ["identity_at_init", "grad_flow"],
                       extra_configs=(case,), only_configs=("main", "tiny"))
    rows = runner.run(plan, progress=False)
    tiny = [r for r in rows if r.config == "tiny"]
    assert tiny and {(r.check, r.dtype) for r in tiny} == {("identity_at_init", "float32")}
    main = {(r.check, r.dtype) for r in rows if r.config == "alpha8-r4"}
    assert main == {(c, d) for c in ("identity_at_init", "grad_flow") for d in ("float32", "bfloat16")}
    assert {r.config for r in rows} == {"alpha8-r4", "tiny"}  # --configs left the card's other corners out


def test_the_gate_tells_configs_apart():
    a = Row("lora", "init", "qwen2", "float32", "B_max_abs", 0.0, 0.0, "pass", config="rslora").to_dict()
    b = dict(a, config="alpha8-r4")
    assert gate.key(a) != gate.key(b)
    old = {k: v for k, v in a.items() if k != "config"}  # a baseline row written before configs existed
    assert gate.key(old)[1] == "main"


def test_cli_config_adds_one_config_and_states_it(tmp_path):
    out = tmp_path / "out"
    rc = cli.main(["run", "--out", str(out), "--variants", "lora", "--models", "mlp", "--dtypes", "fp32",
                   "--checks", "identity_at_init,init", "--configs", "main,cli", "--config", "alpha=16",
                   "--config", "use_rslora=true", "--quiet", "--jobs", "1"])
    assert rc == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["config"] for r in rows} == {"alpha8-r4", "cli"}
    report = (out / "lora.md").read_text()
    table = report.split("### Configs audited")[1].split("##")[0]
    assert "| cli |" in table and "alpha=16" in table and "use_rslora=True" in table
    assert "| alpha8-r4 (main) |" in table


@pytest.mark.parametrize("argv, words", [
    (["--config", "rho=2"], ["--config", "lora", "rho"]),
    (["--config", "alpha"], ["KEY=VALUE"]),
    (["--config", "r=-1"], ["lora", "r"]),
    (["--configs", "nope"], ["--configs", "nope"]),
])
def test_bad_config_options_are_refused_before_any_work(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--out", str(tmp_path / "o"), "--variants", "lora", "--models", "mlp", "--quiet", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_every_report_states_each_config(tmp_path):
    rc = cli.main(["run", "--out", str(tmp_path), "--variants", "road", "--models", "mlp", "--dtypes", "fp32",
                   "--checks", "identity_at_init", "--quiet", "--jobs", "1"])
    assert rc == 0
    table = (tmp_path / "road.md").read_text().split("### Configs audited")[1].split("##")[0]
    for cid in ("road_1 (main)", "road_2", "road_4"):
        assert f"| {cid} |" in table
    summary = json.loads((tmp_path / "results.json").read_text())
    assert {r["config"] for r in summary["rows"]} == {"road_1", "road_2", "road_4"}


def test_subject_defaults_come_from_the_subject():
    from audit.subjects.ours import Ours
    from audit.subjects.peft import Peft
    assert Ours().default_config("delora")["init_style"] == "paper"
    peft = Peft().default_config("delora")
    assert peft["init_style"] == "peft" and peft["lambda0"] > 0
    assert Peft().default_config("eva")["rho"] == 2.0  # peft's EvaConfig default
    from audit.subjects.base import NotSupported, Subject

    class Bare(Subject):
        tensor_names = {}
    with pytest.raises(NotSupported):
        Bare().default_config("lora")


def test_zero_grad_claims_render_with_their_configs():
    from audit import report_config
    tgt = runner.default_targets(["delora"])[0]
    claims = {(c["tensor"], c["configs"]) for c in report_config.zero_grad_claims(tgt)}
    assert ("lam", "") in claims  # every config
    assert ("A", "peft-init") in claims
    assert isinstance(get("road").at("road_4").zero_grads["alpha"], ZeroGrad)


def test_ours_twin_takes_the_subjects_ranks_under_rank_redistribution():
    """EVA with rho > 1: peft (the subject) and ours allocate ranks from their own variance estimates;
    the twin holds the subject's state, so it takes the subject's rank on every layer."""
    on_qwen2 = replace(get("eva").case("rho2"), models=("qwen2",))  # 14 layers: the allocations differ
    plan = runner.Plan(runner.default_targets(["eva"], "peft"), ["qwen2"], ["float32"], ["peft_parity"],
                       extra_configs=(on_qwen2,), only_configs=("rho2",))
    rows = runner.run(plan, progress=False)
    assert rows and not [r for r in rows if r.status == "error"], [r.message for r in rows if r.status == "error"]
    assert any(r.status == "pass" and r.metric == "logits_rel_err" for r in rows)
