"""Deviations scoped by a library's release range and by config values (not config ids)."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from audit import library_versions, runner
from audit.cards import ConfigCase, Deviation, get
from audit.rows import Row

ROOT = Path(__file__).resolve().parents[1]
PEFT = library_versions.installed("peft")


def _dev(**kw) -> Deviation:
    base = dict(id="peft-x", check="paper_parity", metric="output_rel_err", reference="peft", kind="xfail",
                reason="r", source="s", magnitude=1.0, subjects=("peft",))
    return Deviation(**{**base, **kw})


def _judged(dev: Deviation) -> list[Row]:
    card = replace(get("lora"), deviations=(dev,), configs=())
    row = Row("lora", "paper_parity", "mlp", "float32", "output_rel_err", 0.5, 1e-6, "fail")
    return runner.apply_deviations(card, [row], "peft")


def _next_minor(version: str) -> str:
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


@pytest.mark.parametrize("releases,applies", [(None, True), (f">={PEFT}", True), (f"=={PEFT}", True),
                                              ("<0.10", False), (f">={_next_minor(PEFT)}", False)])
def test_a_release_scoped_deviation_applies_only_within_its_range(releases, applies):
    rows = _judged(_dev(releases=releases))
    statuses = {r.metric: r.status for r in rows}
    # outside its range it is neither applied (the row stays a fail) nor required (no error row)
    assert statuses == ({"output_rel_err": "xfail"} if applies else {"output_rel_err": "fail"})


def test_a_release_scope_is_validated_and_shown():
    with pytest.raises(ValueError, match="peft-x.*not a PEP 440"):
        _dev(releases="since 0.14")
    with pytest.raises(ValueError, match="paper has no releases"):
        _dev(reference="paper", releases=">=0.14")
    assert _dev(releases=">=0.14,<0.18", when={"use_dora": True}).scope() == "peft >=0.14,<0.18, use_dora=True"


def test_a_deviation_follows_config_values_not_ids():
    card = get("lokr")
    full = card.case("full-alpha16")
    same = ConfigCase("r=8,alpha=16.0", dict(full.fields), "spelt out with --config")
    other = ConfigCase("r=8,alpha=8.0", {**full.fields, "alpha": 8.0}, "another scale")
    ids = lambda case: {d.id for d in card.with_case(case).at(case.id).deviations}
    declared = {d.id for d in card.deviations if d.configs == ("full-alpha16",)}
    assert declared and declared <= ids(same)
    assert not declared & ids(other)
    # the main config's deviations reach a --config case only when it has the main config's values
    main_only = {d.id for d in card.deviations if d.configs == (card.config_id,)}
    assert main_only <= ids(ConfigCase("again", {}, "the main config restated"))


def test_when_ties_a_deviation_to_field_values():
    card = get("oft")
    dev = _dev(id="peft-oft-exact", check="paper_parity", when={"use_cayley_neumann": False})
    card = replace(card, deviations=(dev,))
    assert [d.id for d in card.at(card.config_id).deviations] == ["peft-oft-exact"]
    assert card.at("neumann5-b8").deviations == ()


@pytest.mark.slow
def test_a_config_given_by_values_gets_the_cards_deviations_end_to_end(tmp_path):
    """peft's LoKr scale departure is declared on config full-alpha16; the same values given with
    --config are the same departure: xfail rows, no undeclared failure."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "audit", "run", "--subject", "peft", "--variants", "lokr",
                           "--models", "mlp", "--dtypes", "float32", "--checks", "paper_parity", "--configs", "cli",
                           "--config", "r=8", "--config", "alpha=16", "--out", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    res = json.loads((out / "results.json").read_text())
    extra = [r for r in res["rows"] if r["config"] != get("lokr").config_id]
    assert extra, proc.stdout + proc.stderr
    assert not [r for r in extra if r["status"] in ("fail", "error", "xpass")], proc.stdout
    assert {r["deviation"] for r in extra if r["status"] == "xfail"} >= {"peft-lokr-full-scale"}


def test_a_row_against_a_departing_reference_is_na_for_another_subject():
    """A peft deviation on a check where ours is compared side by side with peft (peft_parity): peft is no truth
    there, so ours' row is n/a naming the deviation (not failed, not partial); peft's own row is xfail."""
    dev = _dev(check="peft_parity", metric="grad_rel_err[A]", subjects=None)
    card = replace(get("lora"), deviations=(dev,), configs=())
    row = Row("lora", "peft_parity", "mlp", "float32", "grad_rel_err[A]", 0.5, 1e-6, "fail", reference="peft")
    ours, = runner.apply_deviations(card, [replace(row)], "ours")
    assert ours.status == "n/a" and ours.deviation == "peft-x" and "no truth" in ours.message
    peft, = runner.apply_deviations(card, [replace(row, reference="ours")], "peft")
    assert peft.status == "xfail"
    paper_row = replace(row, check="peft_parity", reference="paper")  # compared with something else: judged
    judged = runner.apply_deviations(card, [paper_row], "ours")
    assert judged[0].status == "fail"
