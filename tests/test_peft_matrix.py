"""The peft release matrix (audit/peft_matrix.py, audit/peft_matrix_report.py) without the package index:
options validated before any work, the cache reused only under the same key, shards merged, and the
matrix built from release summaries (verdict cells, the findings that decided them, each finding's first
and last release)."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from audit import cli, peft_matrix, peft_matrix_report
from audit.rows import Row
from audit.verdict import verdicts


def _results(release: str, failing: bool, absent: tuple[str, ...] = ()) -> dict:
    """A results.json as `run --subject peft` writes it: lora with a passing parity row and a declared
    checkpoint departure, plus an init failure when ``failing``; methods in ``absent`` all n/a."""
    rows = [Row("lora", "paper_parity", "mlp", "float32", "output_rel_err", 1e-7, 1e-6, "pass", config="main"),
            Row("lora", "save_load", "mlp", "float32", "missing_key_raises", 0.0, 1.0, "xfail", op="==",
                deviation="peft-load-missing-keys", config="main"),
            Row("lora", "init", "mlp", "float32", "B_max_abs", 0.5 if failing else 0.0, 0.0,
                "fail" if failing else "pass", config="main")]
    rows += [Row(m, c, "mlp", "float32", "-", None, None, "n/a", message=f"peft {release} has no {m}")
             for m in absent for c in ("init", "paper_parity")]
    return {"meta": {"versions": {"peft": release, "transformers": "5.0"}, "git_commit": "abc", "argv": []},
            "rows": [asdict(r) for r in rows], "verdicts": verdicts(rows)}


def _records(spec: dict[str, tuple[bool, tuple[str, ...]]]) -> list[dict]:
    return [{"release": rel, "status": "audited", "seconds": 1.0, **peft_matrix_report.summarise(_results(rel, f, a))}
            for rel, (f, a) in spec.items()]


def test_a_finding_has_its_first_and_last_release_and_decides_its_cells():
    doc = peft_matrix_report.matrix(_records({"0.12.0": (False, ()), "0.10.0": (True, ("vera",)),
                                              "0.11.0": (True, ())}))
    assert [r["release"] for r in doc["releases"]] == ["0.10.0", "0.11.0", "0.12.0"]  # by version, not as given
    init = next(f for f in doc["findings"] if f["check"] == "init")
    assert (init["first"], init["last"], init["releases"]) == ("0.10.0", "0.11.0", ["0.10.0", "0.11.0"])
    assert "B_max_abs on mlp/float32@main: 0.5 (<= 0)" in init["message"]
    cells = {r["release"]: r["methods"]["lora"] for r in doc["releases"]}
    assert cells["0.10.0"]["verdict"] == "non-conformant" and cells["0.12.0"]["verdict"] == "partial"
    assert doc["releases"][0]["methods"]["vera"]["verdict"] == "absent"
    md = peft_matrix_report.render_markdown(doc)
    ids = {f["check"]: f["id"] for f in doc["findings"]}
    row_010 = next(ln for ln in md.splitlines() if ln.startswith("| 0.10.0 | 5.0 |"))
    assert f"✗ [{ids['init']}](#{ids['init'].lower()})" in row_010  # the undeclared finding decides it
    row_012 = next(ln for ln in md.splitlines() if ln.startswith("| 0.12.0 | 5.0 |"))
    assert f"~ [{ids['save_load']}]" in row_012 and ids["init"] + "]" not in row_012
    assert "| – |" in row_010  # vera is absent from 0.10.0


def test_a_release_refusing_a_config_field_is_not_audited_rather_than_absent():
    """'OFTConfig has no oft_block_size' (a release that has OFT but not the field the card's config needs)
    reads "not audited" with its reason; only 'peft X has no oft' is an absent method."""
    res = _results("0.13.2", False, absent=("oft",))
    for r in res["rows"]:
        if r["variant"] == "oft":
            r["message"] = "peft 0.13.2 OFTConfig has no oft_block_size"
    cell = peft_matrix_report.summarise(res)["methods"]["oft"]
    assert cell["verdict"] == "not audited" and "oft_block_size" in cell["why"]
    assert peft_matrix_report.summarise(_results("0.13.2", False, absent=("oft",)))["methods"]["oft"]["verdict"] == "absent"


@pytest.mark.parametrize("spec, error", [("0.10.0,zero", "not a release number"), (",", "names no release")])
def test_bad_release_lists_are_refused(spec, error):
    with pytest.raises(peft_matrix.MatrixError, match=error):
        peft_matrix.parse_releases(spec)


@pytest.mark.parametrize("spec, error", [("3/2", "between 1 and 2"), ("a/b", "must look like"), ("0/4", "between")])
def test_bad_shards_are_refused(spec, error):
    with pytest.raises(peft_matrix.MatrixError, match=error):
        peft_matrix.parse_shard(spec)


def test_shards_split_every_release_exactly_once():
    releases = [f"0.{i}.0" for i in range(10, 23)]
    parts = [peft_matrix.shard_of(releases, (i, 4)) for i in range(1, 5)]
    assert sorted(sum(parts, []), key=releases.index) == releases and all(parts)


@pytest.mark.parametrize("options, error", [(["--out", "x"], "sets --out"), (["--models", "nosuch"], None),
                                            (["--bogus"], "not understood")])
def test_run_options_are_validated(options, error):
    if error is None:  # a model name is checked by run itself, later: the parser accepts it
        assert peft_matrix.check_run_options(["--", *options]) == options
        return
    with pytest.raises(peft_matrix.MatrixError, match=error):
        peft_matrix.check_run_options(options)


def test_the_cache_is_reused_only_under_the_same_key(tmp_path, monkeypatch):
    calls = []

    def install(release, site):
        calls.append(release)
        raise RuntimeError("offline")
    monkeypatch.setattr(peft_matrix, "_install", install)
    key = {"release": "0.13.0", "pins": [], "options": [], "source": "k1"}
    (tmp_path / "0.13.0").mkdir()
    (tmp_path / "0.13.0" / "record.json").write_text(json.dumps({"release": "0.13.0", "key": key,
                                                                  "status": "audited", "seconds": 3.0}))
    hit = peft_matrix.audit_release("0.13.0", tmp_path, [], 1, "k1")
    assert hit["cached"] and calls == []
    miss = peft_matrix.audit_release("0.13.0", tmp_path, [], 1, "k2")  # the audit's code changed
    assert calls == ["0.13.0"] and miss["status"] == "not installed" and "offline" in miss["message"]


def test_merge_renders_shards_and_refuses_overlaps(tmp_path, capsys):
    recs = _records({"0.10.0": (True, ()), "0.11.0": (False, ())})
    for i, rec in enumerate(recs, 1):
        (tmp_path / f"s{i}.json").write_text(json.dumps({"kind": "peft-matrix-shard", "releases": [rec]}))
    out = tmp_path / "out"
    assert cli.main(["peft-matrix", "--merge", str(tmp_path / "s1.json"), str(tmp_path / "s2.json"),
                     "--out", str(out)]) == 0
    doc = json.loads((out / "peft-releases.json").read_text())
    assert [r["release"] for r in doc["releases"]] == ["0.10.0", "0.11.0"]
    assert (out / "peft-releases.md").read_text().startswith("# peft releases against the papers")
    with pytest.raises(SystemExit) as e:
        cli.main(["peft-matrix", "--merge", str(tmp_path / "s1.json"), str(tmp_path / "s1.json"), "--out", str(out)])
    assert e.value.code == 2 and "in two shards" in capsys.readouterr().err
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit):
        cli.main(["peft-matrix", "--merge", str(tmp_path / "other.json"), "--out", str(out)])
    assert "not a peft-matrix shard file" in capsys.readouterr().err


# -- the committed matrix: fixes from peft's history, each seen on both sides of its release ---------

# (method, concern, the finding's check · metric, last release with the bug, first with the fix, peft's fix)
HISTORICAL_FIXES = [
    ("adalora", "init", "init · E_max_abs", "0.11.1", "0.12.0",
     "FIX Init AdaLoRA to be identity transform (#1884): λ (lora_E) was drawn at random, so ΔW ≠ 0 at init"),
    # (LoKr's missing α/r, fixed by #2180 in 0.14.0, is not a clean pair: 0.14.0-0.15.2 still crash in bfloat16,
    # the bug #2433 fixed in 0.16.0, now that the main config is audited there through its init stand-in)
    ("loha", "equation", "subject_raised · raised in forward", "0.15.2", "0.16.0",
     "Fix: Multiple PEFT methods have issues with models loaded in float16 or bfloat16 (#2433): LoHa's forward "
     "mixed a float32 adapter with a bfloat16 input"),
    ("oft", "equation", "paper_parity · output_rel_err", "0.17.1", "0.18.0",
     "ENH Updates to OFT (#2805): the Neumann-series Cayley transform computed another R than (I + Q)(I − Q)⁻¹"),
    ("boft", "merge", "subject_raised · raised in merge", "0.15.2", "0.16.0",
     "Fix: Multiple PEFT methods have issues with models loaded in float16 or bfloat16 (#2433): BOFT's merge "
     "multiplied a float32 rotation into a bfloat16 weight"),
    ("fourierft", "merge", "subject_raised · raised in merge", "0.18.1", "0.19.0",
     "FEAT Convert non-LoRA PEFT adapters to LoRA (#2939): FourierFT's merge added ΔW untransposed to a "
     "Conv1D weight (fan_in_fan_out)"),
]


@pytest.mark.parametrize("method, concern, finding, buggy, fixed, fix", HISTORICAL_FIXES,
                         ids=[f[0] for f in HISTORICAL_FIXES])
def test_the_matrix_shows_a_historical_fix_on_both_sides(method, concern, finding, buggy, fixed, fix):
    """The release with the bug is non-conformant in that concern with the finding named; the release with
    peft's fix is conformant, or partial only for declared departures that name their source."""
    from conftest import committed_report

    from audit.cards import get
    from audit.subjects.peft import Peft
    doc = committed_report("reports/peft-releases.json")
    releases = {r["release"]: r for r in doc["releases"]}
    assert len([r for r in doc["releases"] if r["status"] == "audited"]) >= 12
    findings = {f["key"]: f for f in doc["findings"]}
    before, after = releases[buggy]["methods"][method], releases[fixed]["methods"][method]
    assert before["verdict"] == "non-conformant" and before["concerns"][concern] == "non-conformant", fix
    named = [k for k in before["findings"] if finding in k and findings[k]["status"] == "fail"]
    assert named, f"{method} {buggy}: no {finding} finding ({fix})"
    assert fixed not in findings[named[0]]["releases"] and findings[named[0]]["last"] != fixed
    assert after["verdict"] in ("conformant", "partial") and after["concerns"][concern] in ("conformant", "partial"), fix
    declared = {d.id: d for d in (*get(method).deviations, *Peft().deviations(method))}
    for key in after["findings"]:
        f = findings[key]
        assert f["status"] == "xfail", f"{method} {fixed}: undeclared finding {key}"
        assert f["deviation"] in declared and declared[f["deviation"]].source, f"{f['deviation']}: no sourced declaration"


def test_a_cached_release_is_sharded_and_merged_without_the_package_index(tmp_path, capsys):
    """The CLI path a CI job matrix takes: a release whose cache entry has the current key is not installed
    again; its shard file carries the summary, and --merge renders it."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    (cache / "0.13.0" / "out").mkdir(parents=True)
    (cache / "0.13.0" / "out" / "results.json").write_text(json.dumps(_results("0.13.0", failing=True)))
    key = {"release": "0.13.0", "pins": [], "options": [], "source": peft_matrix.source_key()}
    (cache / "0.13.0" / "record.json").write_text(json.dumps({"release": "0.13.0", "key": key,
                                                              "status": "audited", "seconds": 2.0}))
    assert cli.main(["peft-matrix", "--releases", "0.13.0", "--shard", "1/1", "--cache", str(cache),
                     "--out", str(out), "--quiet"]) == 0
    shard = out / "peft-releases.shard-1-of-1.json"
    rec = json.loads(shard.read_text())["releases"][0]
    assert rec["cached"] and rec["methods"]["lora"]["verdict"] == "non-conformant"
    assert cli.main(["peft-matrix", "--merge", str(shard), "--out", str(out)]) == 0
    assert "| 0.13.0 | 5.0 | ✗ [F" in (out / "peft-releases.md").read_text()
    assert "peft 0.13.0: audited, 1 methods, non-conformant: lora" in capsys.readouterr().out


def test_a_non_finite_measurement_is_summarised_as_written_to_results_json():
    """results.json stores a nan or inf value as the string "nan"/"inf" (Row.to_dict); the matrix reads it
    back as a number in the finding's line rather than failing to format it."""
    res = _results("0.20.0", False)
    res["rows"].append(Row("lora", "merge", "mlp", "float32", "merged_rel_err", float("nan"), 1e-5, "fail",
                           config="main").to_dict())
    assert res["rows"][-1]["value"] == "nan"
    finding = next(f for f in peft_matrix_report.matrix(
        [{"release": "0.20.0", "status": "audited", "seconds": 1.0, **peft_matrix_report.summarise(res)}])["findings"]
        if f["check"] == "merge")
    assert "merged_rel_err on mlp/float32@main: nan (<= 1e-05)" in finding["message"]
