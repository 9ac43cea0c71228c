"""The regression gate: passes on the committed baseline, fails with a readable table otherwise."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from audit import cli, gate

REPORTS = Path(__file__).resolve().parents[1] / "reports"


@pytest.fixture(scope="module")
def committed():
    return json.loads((REPORTS / "results.json").read_text())


@pytest.fixture(scope="module")
def baseline():
    return json.loads((REPORTS / "baseline.json").read_text())


def test_committed_results_pass_the_committed_baseline(committed, baseline):
    rep = gate.compare(baseline, committed)
    assert rep.ok, gate.render(rep)
    assert rep.compared == len(baseline["rows"]) > 1000


def _first(doc, **match):
    return next(r for r in doc["rows"] if all(r[k] == v for k, v in match.items()))


def test_a_flipped_cell_fails_with_a_table(committed, baseline):
    doc = copy.deepcopy(committed)
    row = _first(doc, check="paper_parity", status="pass")
    row["status"] = "fail"
    rep = gate.compare(baseline, doc)
    text = gate.render(rep)
    cell = "/".join(str(x) for x in gate.key(row))
    assert not rep.ok and cell in text and "status worse" in text and "FAIL" in text


def test_a_missing_cell_a_grown_error_and_a_dropped_verdict_fail(committed, baseline):
    doc = copy.deepcopy(committed)
    gone = doc["rows"].pop(0)
    # a row using 10-20% of its tolerance grown 5x: still under its tolerance, but beyond the gate's
    # FACTOR x max(baseline, tolerance / 10)
    grown = next(r for r in doc["rows"] if r["op"] == "<=" and r["check"] != "timing"
                 and isinstance(r["value"], float) and r["tolerance"] and 0.1 < r["value"] / r["tolerance"] < 0.2)
    grown["value"] *= 5
    assert grown["value"] <= grown["tolerance"]
    name = next(iter(doc["verdicts"]))
    doc["verdicts"][name]["verdict"] = "non-conformant"
    whys = {why for *_, why in gate.compare(baseline, doc).regressions}
    assert {"cell disappeared", "verdict dropped"} <= whys
    assert any("grew more than" in w for w in whys)
    assert gone


def test_new_cells_are_listed_and_timing_is_not_gated(committed, baseline):
    doc = copy.deepcopy(committed)
    extra = dict(doc["rows"][0], metric="brand_new_metric")
    doc["rows"].append(extra)
    for r in doc["rows"]:
        if r["check"] == "timing" and r["value"] is not None:
            r["value"] *= 50
    rep = gate.compare(baseline, doc)
    assert rep.ok, gate.render(rep)
    assert any("brand_new_metric" in c for c in rep.new_cells)


def test_gate_cli_fails_when_an_implementation_is_broken(tmp_path):
    """A broken lora (scale alpha instead of alpha/r) audited fresh fails against a baseline of the real one."""
    impl = tmp_path / "broken.py"
    impl.write_text("from variants.lora import Lora\n\nclass Broken(Lora):\n"
                    "    @staticmethod\n    def scale(cfg, r):\n        return cfg.alpha\n")
    small = ["--models", "mlp", "--dtypes", "float32", "--checks", "identity_at_init,paper_parity", "--quiet"]
    assert cli.main(["run", "--out", str(tmp_path / "good"), "--variants", "lora", *small]) == 0
    assert cli.main(["baseline", "--results", str(tmp_path / "good" / "results.json"),
                     "--out", str(tmp_path / "baseline.json")]) == 0
    assert cli.main(["gate", "--baseline", str(tmp_path / "baseline.json"),
                     "--results", str(tmp_path / "good" / "results.json")]) == 0
    # exit 1: the broken run is non-conformant; the gate then compares it against the baseline
    assert cli.main(["run", "--out", str(tmp_path / "bad"), "--impl", f"{impl}:Broken", "--card", "lora", *small]) == 1
    assert cli.main(["gate", "--baseline", str(tmp_path / "baseline.json"),
                     "--results", str(tmp_path / "bad" / "results.json")]) == 1


def test_gate_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="results file not found"):
        gate.gate(tmp_path / "nope.json", tmp_path / "nope2.json")
