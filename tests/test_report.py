"""Reports from hand-made rows: failures first, honest digits, reference findings apart, CSV, progress."""
from __future__ import annotations

import dataclasses
import io
import math
import re

import pandas as pd
import pytest

import variants
from audit import report, report_format, report_subject, runner, verdict
from audit.cards import get
from audit.rows import Row

META = {"seed": 0, "device": "cpu", "versions": {"torch": "t", "transformers": "tf", "peft": "p"},
        "git_commit": "abc", "git_dirty": False, "wall_seconds": 1.0, "models": ["qwen2", "mlp"],
        "dtypes": ["float32", "bfloat16"], "checks": ["paper_parity", "peft_parity", "training"],
        "implementations": {}}
CELLS = [("qwen2", "float32"), ("qwen2", "bfloat16"), ("mlp", "float32"), ("mlp", "bfloat16")]


def row(variant, check, metric, value, tol, status=None, model="qwen2", dtype="float32", op="<=", **kw):
    from audit.rows import judge
    return Row(variant, check, model, dtype, metric, value, tol,
               status or (judge(value, op, tol) if tol is not None else "pass"), op=op, **kw)


def passing(variant: str) -> list[Row]:
    out = []
    for m, d in CELLS:
        out += [row(variant, "identity_at_init", "logits_rel_err", 0.0, 0.0, model=m, dtype=d),
                row(variant, "paper_parity", "output_rel_err", 5e-7, 1e-6, model=m, dtype=d,
                    message="worst layer q"),
                row(variant, "peft_parity", "logits_rel_err", 2e-7, 1e-6, model=m, dtype=d),
                row(variant, "training", "loss_ratio", 0.5, 0.9, model=m, dtype=d),
                row(variant, "timing", "fwd_median_ms[base]", 2.0, None, model=m, dtype=d),
                row(variant, "timing", "fwd_median_ms[ours]", 2.5, None, model=m, dtype=d),
                row(variant, "timing", "fwd_bwd_ratio_vs_base", {"mlp": 0.8, "qwen2": 0.9}[m] if d == "float32" or m == "mlp"
                    else 1.3, None, model=m, dtype=d),
                row(variant, "timing", "fwd_bwd_ratio_vs_peft", 0.9, 10.0, model=m, dtype=d, reference="peft"),
                row(variant, "timing", "fwd_bwd_peak_mem_mb[ours]", 1.2, None, model=m, dtype=d)]
    return out


def failing(variant: str) -> list[Row]:
    rs = passing(variant)
    rs[1] = row(variant, "paper_parity", "output_rel_err", 0.95004, 0.95, message="worst layer v")
    for m, d in CELLS:  # a constant factor 4 on a gradient: rel err 3 everywhere
        rs.append(row(variant, "paper_parity", "grad_rel_err[A]", 3.0 + 1e-4 * len(m), 1e-6, model=m, dtype=d))
    rs.append(row(variant, "paper_parity", "delta_scale_factor", 4.0, 1.0, op="=="))
    # rows about the reference: a declared one (xfail) and an undeclared one (fail)
    rs.append(row(variant, "peft_parity", "peft_default_targets_mismatch", 2.0, 0.0, status="xfail",
                  about="reference", reference="peft", deviation="peft-targets", message="peft targets q"))
    rs.append(row(variant, "peft_parity", "peft_layer_vs_paper_rel_err", 0.2, 1e-6, model="mlp",
                  about="reference", reference="peft", message="peft layer differs"))
    return rs


def not_audited(variant: str) -> list[Row]:
    return [row(variant, "training", "loss_ratio", 0.5, 0.9, model=m, dtype=d) for m, d in CELLS]


def target(name: str) -> runner.Target:
    card = dataclasses.replace(get("lora"), name=name)
    return runner.Target(card, variants.REGISTRY["lora"], f"tests.{name}")


@pytest.fixture()
def rendered(tmp_path):
    rows = passing("good") + failing("bad") + not_audited("idle")
    verdicts = verdict.verdicts(rows)
    report.render(tmp_path, META, rows, verdicts, [target("good"), target("bad"), target("idle")])
    return tmp_path, rows, verdicts


def section(text: str, title: str) -> str:
    """The body of the '## title' section of a markdown document."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def test_the_verdicts_are_what_the_fixture_means(rendered):
    _, _, verdicts = rendered
    assert {k: v["verdict"] for k, v in verdicts.items()} == {
        "good": "conformant", "bad": "non-conformant", "idle": "not audited"}


def test_failures_print_a_failing_value_apart_from_its_tolerance(rendered):
    out, _, _ = rendered
    fails = section((out / "bad.md").read_text(), "Failures")
    line = next(ln for ln in fails.splitlines() if ln.startswith("| qwen2 | float32 | output_rel_err |"))
    cells = [c.strip() for c in line.split("|")]
    value, bound, margin = cells[4], cells[5], cells[6]
    assert value == "0.95004" and bound == "<= 0.95"
    assert float(margin) > 1 and margin != "1"
    assert "value is 1.00004× the tolerance" in line


def test_number_formatting_never_hides_a_failure():
    assert report_format.fmt_vs(0.95004, 0.95) == ("0.95004", "0.95")
    assert report_format.fmt_vs(0.95, 0.95) == ("0.95", "0.95")
    v, t = report_format.fmt_vs(1.0000000001e-6, 1e-6)
    assert v != t and float(v) > float(t)
    assert report_format.fmt_margin(1.0000421) == "1.00004"
    assert report_format.fmt_margin(0.99996) == "0.99996"
    assert report_format.fmt_margin(6.2345) == "6.2" and report_format.fmt_margin(math.inf) == "inf"
    assert report_format.fmt_margin(None) == "-"


def test_reference_findings_have_their_own_section_and_are_not_failures(rendered):
    out, _, _ = rendered
    text = (out / "bad.md").read_text()
    fails, refs = section(text, "Failures"), section(text, "Reference findings")
    for metric in ("peft_default_targets_mismatch", "peft_layer_vs_paper_rel_err"):
        assert metric in refs
        assert metric not in fails
    assert "peft-targets" in refs and "undeclared" in refs
    summary = section((out / "SUMMARY.md").read_text(), "Reference findings")
    assert re.search(r"bad: peft peft_parity `peft_default_targets_mismatch` xfail \(declared `peft-targets`\) "
                     r"on qwen2 × fp32", summary)
    assert "good:" not in summary


def test_failures_carry_a_cheap_diagnosis(rendered):
    out, _, _ = rendered
    fails = section((out / "bad.md").read_text(), "Failures")
    assert "scale off by 4×" in fails  # the scale_factor row
    grad = next(ln for ln in fails.splitlines() if ln.startswith("- `grad_rel_err[A]`"))
    assert "every model × dtype" in grad and "scale off by 4× or -2×" in grad
    out_line = next(ln for ln in fails.splitlines() if ln.startswith("- `output_rel_err`"))
    assert "1 of 4 cells" in out_line and "scale off" not in out_line  # one cell: no constant-factor claim


def test_summary_shows_verdict_deciding_checks_and_margins(rendered):
    out, _, _ = rendered
    text = (out / "SUMMARY.md").read_text()
    concerns, checks = text.split("## By check")
    header = next(ln for ln in concerns.splitlines() if ln.startswith("| variant |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    bad = dict(zip(cols, (c.strip() for c in next(ln for ln in concerns.splitlines()
                                                    if ln.startswith("| [bad]")).strip("|").split("|"))))
    assert bad["verdict"] == "**non-conformant**" and bad["decided by"] == "equation"
    assert bad["equation"] == "**non-conformant** (paper_parity)"
    header = next(ln for ln in checks.splitlines() if ln.startswith("| variant |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    bad = next(ln for ln in checks.splitlines() if ln.startswith("| [bad]"))
    good = next(ln for ln in checks.splitlines() if ln.startswith("| [good]"))
    bad_cells = dict(zip(cols, (c.strip() for c in bad.strip("|").split("|"))))
    good_cells = dict(zip(cols, (c.strip() for c in good.strip("|").split("|"))))
    assert bad_cells["verdict"] == "**non-conformant**" and bad_cells["decided by"] == "paper_parity"
    assert bad_cells["paper parity"].startswith("**fail ") and float(bad_cells["paper parity"][7:-2]) > 1e6
    assert good_cells["verdict"] == "**conformant**"
    assert good_cells["paper parity"] == "pass 0.5" and good_cells["training"] == "pass 0.56"
    assert good_cells["identity"] == "pass 0" and good_cells["properties"] == "-"
    # the failing value's margin prints above 1 in the variant's overview as well
    overview = section((out / "bad.md").read_text(), "Verdict and why")
    assert "failing row" in overview and "see Failures" in overview


def test_not_audited_renders(rendered):
    out, _, verdicts = rendered
    text = (out / "idle.md").read_text()
    assert text.startswith("# idle: not audited (confidence none)")
    assert "no parity check" in section(text, "Verdict and why")
    idle = next(ln for ln in (out / "SUMMARY.md").read_text().splitlines() if ln.startswith("| [idle]"))
    assert "**not audited**" in idle


def test_a_passing_report_is_short_and_folds_its_tables(rendered):
    out, _, _ = rendered
    text = (out / "good.md").read_text()
    head, _, tail = text.partition("## All measurements")
    assert tail and len(head.splitlines()) < 200
    assert section(text, "Failures").strip() == "None."
    assert "| metric | bound |" not in head
    blocks = re.findall(r"<details><summary>(.*?)</summary>(.*?)</details>", tail, re.S)
    assert [b[0].split(":")[0] for b in blocks] == ["identity_at_init", "paper_parity", "peft_parity",
                                                     "training", "timing"]
    assert all("| metric | bound |" in body for _, body in blocks)
    assert tail.count("| metric | bound |") == len(blocks)
    paper = dict(blocks)[next(s for s, _ in blocks if s.startswith("paper_parity"))]
    assert "| output_rel_err | <= 1.000e-06 | 5.000e-07 | 5.000e-07 | 5.000e-07 | 5.000e-07 | 0.5 |" in paper
    # every markdown table starts after a blank line (else it renders as text): the config table too
    lines = text.splitlines()
    assert all(lines[i - 1] == "" for i, ln in enumerate(lines) if ln.startswith("| ") and
               not lines[i - 1].startswith("|")), [ln for i, ln in enumerate(lines)
                                                    if ln.startswith("| ") and lines[i - 1] not in ("",) and
                                                    not lines[i - 1].startswith("|")]


def test_timing_is_labelled_overhead_bound_and_cannot_contradict_itself(rendered):
    out, _, _ = rendered
    summary = section((out / "SUMMARY.md").read_text(),
                      "Timing (tiny models, per-call overhead dominates; not a speed claim; see `nox -s bench`)")
    header = next(ln for ln in summary.splitlines() if ln.startswith("| variant |"))
    assert "fwd ours" not in header and " ms " not in header  # fwd+bwd ratios and memory only
    good = next(ln for ln in summary.splitlines() if ln.startswith("| good |"))
    assert "≈1 (noise: 0.85) [0.8–1.3]" in good  # ours/base 0.9, 1.3, 0.8, 0.8: a median below 1 is noise
    text = (out / "good.md").read_text()
    assert "fwd_median_ms" not in text  # millisecond medians stay in the CSV
    timing = re.search(r"<details><summary>timing:.*?</details>", text, re.S).group(0)
    assert "overhead dominates" in timing and "| 0.9 (noise) | 1.3 | 0.8 (noise) | 0.8 (noise) |" in timing


def test_results_csv_round_trips_with_pandas(rendered):
    out, rows, _ = rendered
    df = pd.read_csv(out / "results.csv")
    assert len(df) == len(rows)
    assert list(df.columns) == list(Row.__dataclass_fields__) + ["margin"]
    bad = df[(df.variant == "bad") & (df.metric == "output_rel_err") & (df.model == "qwen2")
             & (df.dtype == "float32")]
    assert bad.status.tolist() == ["fail"] and bad.margin.iloc[0] == pytest.approx(0.95004 / 0.95)
    assert df[df.about == "reference"].shape[0] == 2
    assert df.margin.isna().sum() == sum(r.margin is None for r in rows)


def test_summary_renders_from_an_older_results_json(tmp_path):
    """The mutants command re-renders SUMMARY from results.json; older files lack newer keys."""
    rows = passing("good")
    old = {"good": {"verdict": "conformant", "confidence": "high", "references_agreeing": [], "reasons": []}}
    report.render_summary(tmp_path, {"seed": 0}, rows, old)
    checks = (tmp_path / "SUMMARY.md").read_text().split("## By check")[1]
    line = next(ln for ln in checks.splitlines() if ln.startswith("| [good]"))
    assert "**conformant**" in line and "pass 0.5" in line


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_lines_in_logs_count_failing_rows():
    stream = io.StringIO()
    bar = runner.Progress(2, stream=stream)
    bar.step("lora / qwen2 / float32", failing("x")[:3])
    bar.step("lora / mlp / float32", [row("x", "c", "m", 2.0, 1.0), row("x", "c", "m", 0.5, 1.0)])
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("lora / qwen2 / float32:") and "1/2" in lines[0] and "1 failing" in lines[0]
    assert "2/2" in lines[1] and "2 failing" in lines[1]


def test_progress_on_a_terminal_is_a_tqdm_bar():
    stream = _Tty()
    bar = runner.Progress(3, stream=stream)
    for i in range(3):
        bar.step(f"unit {i}", [row("x", "c", "m", 2.0, 1.0)])
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "3/3" in text and "3 failing" in text and "100%" in text
    assert bar.bar is None  # closed once done; close() again is harmless
    bar.close()


TIMING = "Timing (tiny models, per-call overhead dominates; not a speed claim; see `nox -s bench`)"


# -- the subject and its references --------------------------------------------------------------
PEFT_META = {**META, "versions": {**META["versions"], "peft": "0.21.2"},
             "implementations": {"lora": "peft 0.21.2", "eva": "peft 0.21.2"},
             "subject": {"kind": "peft", "label": "peft 0.21.2", "version": "0.21.2",
                         "references": {"lora": ["paper", "ours"], "eva": ["paper", "ours"]}}}
OURS_META = {**META, "implementations": {"lora": "variants.lora", "antipasto": "variants.antipasto"},
             "subject": {"kind": "ours", "label": "ours (variants/)", "version": "",
                         "references": {"lora": ["paper", "peft"], "antipasto": ["paper", "antipasto3"]}}}


def peft_rows() -> list[Row]:
    """peft as the subject: its declared load-path departure on both cards, DeLoRA's dead A, one
    undeclared failure, and timing against base and ours."""
    out = []
    for v in ("lora", "eva"):
        for m, d in CELLS:
            out += [row(v, "paper_parity", "output_rel_err", 5e-7, 1e-6, model=m, dtype=d),
                    row(v, "save_load", "missing_key_raises", 0.0, 1.0, op="==", status="xfail", model=m, dtype=d,
                        deviation="peft-load-missing-keys", message="loaded without an error")]
        out += [row(v, "timing", "fwd_bwd_ratio_vs_base", 2.0, None),
                row(v, "timing", "fwd_bwd_ratio_vs_ours", 1.25, 10.0, reference="ours"),
                row(v, "timing", "fwd_bwd_peak_mem_mb[base]", 0.5, None),
                row(v, "timing", "fwd_bwd_peak_mem_mb[peft]", 3.0, None),
                row(v, "timing", "fwd_bwd_peak_mem_mb[ours]", 2.0, None)]
    out += [row("eva", "init", "A_subspace_err", 0.9, 1e-5, status="xfail", model=m, dtype=d,
                deviation="peft-eva-approximate-subspace") for m, d in CELLS[:2]]
    out.append(row("eva", "properties", "A_orthonormality_err", 0.5, 1e-6, model="mlp", message="AAᵀ ≠ I"))
    return out


@pytest.fixture()
def peft_rendered(tmp_path):
    from audit.subjects.peft import Peft
    peft = Peft()
    rows = peft_rows()
    targets = [runner.Target(get(n), peft, "peft 0.21.2", "peft") for n in ("lora", "eva")]
    report.render(tmp_path, PEFT_META, rows, verdict.verdicts(rows), targets)
    return tmp_path


def test_a_peft_subject_is_named_with_its_version_and_its_references(peft_rendered):
    summary = (peft_rendered / "SUMMARY.md").read_text()
    head = summary.split("| variant |")[0]
    assert "**Subject audited: peft 0.21.2**, the installed peft through its own code paths" in head
    assert "**Judged against:** the paper's formula and ours (variants/) on every variant (lora, eva)." in head
    assert "predates" not in head
    header = next(ln for ln in summary.splitlines() if ln.startswith("| variant | verdict | confidence |"))
    assert "| ours parity |" in header and "peft parity" not in header
    lora = (peft_rendered / "lora.md").read_text()
    top = lora.split("## Config audited")[0]
    assert "Subject audited: **peft 0.21.2**" in top
    assert "Judged against: the paper's formula and ours (variants/)." in top
    assert "Implementation audited" not in lora


def test_a_peft_subject_lists_its_departures_from_the_papers(peft_rendered):
    summary = (peft_rendered / "SUMMARY.md").read_text()
    deps = section(summary, "peft 0.21.2: departures from the papers")
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")]
             for ln in deps.splitlines() if ln.startswith("| peft-")}
    assert set(lines) == {"peft-load-missing-keys", "peft-eva-approximate-subspace"}
    load = lines["peft-load-missing-keys"]
    assert load[1] == "lora, eva" and load[2] == "peft"
    assert load[3] == "8 xfail: save_load `missing_key_raises` on qwen2, mlp × fp32, bf16"
    assert "only warns" in load[4] and load[5].startswith("peft/peft_model.py")  # reason and source from the card
    assert lines["peft-eva-approximate-subspace"][3] == "2 xfail: init `A_subspace_err` on qwen2 × fp32, bf16"
    undeclared = deps.split("Undeclared failures:")[1]
    assert re.search(r"- eva: properties `A_orthonormality_err` fail \(undeclared\) on mlp × fp32; worst 0\.5",
                     undeclared)
    assert "- lora:" not in undeclared
    # the reference findings section speaks of the reference (ours), not of peft as a reference
    refs = section(summary, "Reference findings")
    assert "(ours, not the subject peft 0.21.2)" in refs and "peft's layers" not in refs


def test_a_peft_subjects_timing_is_peft_against_base_and_ours(peft_rendered):
    summary = (peft_rendered / "SUMMARY.md").read_text()
    timing = section(summary, TIMING)
    assert "| variant | fwd+bwd peft/ours | fwd+bwd peft/base | peak MB base / peft / ours |" in timing
    assert "| lora | 1.25 | 2 | 0.5 / 3 / 2 |" in timing  # peft's 3 MB before ours' 2 MB
    assert "ours/peft" not in timing and "ours/base" not in timing
    table = re.search(r"<details><summary>timing:.*?</details>", (peft_rendered / "lora.md").read_text(), re.S).group(0)
    assert "the gated peft/ours ratios, fwd+bwd peft/base" in table


def test_a_peft_subjects_code_is_peft_own_layer_class(peft_rendered):
    code = section((peft_rendered / "lora.md").read_text(), "What the code does")
    assert "`peft.tuners.lora.layer.Linear`" in code
    assert re.search(r"`Linear\.forward` at `peft/tuners/lora/layer\.py:\d+`", code)
    assert "lora_B(lora_A(dropout(x))) * scaling" in code  # the excerpt reaches the adapter's sum
    assert "variants/" not in code


def test_an_ours_subject_names_itself_and_each_cards_references(tmp_path):
    import audit.subjects as subjects
    ours = subjects.from_spec("ours")
    rows = passing("lora") + passing("antipasto")
    targets = [runner.Target(get(n), ours, f"variants.{n}", "ours") for n in ("lora", "antipasto")]
    report.render(tmp_path, OURS_META, rows, verdict.verdicts(rows), targets)
    summary = (tmp_path / "SUMMARY.md").read_text()
    assert "**Subject audited: ours (variants/)**, this repo's hook runtime and variants." in summary
    assert ("**Judged against:** the paper's formula and peft p on lora; the paper's formula and antipasto3 "
            "(independent port) on antipasto.") in summary
    assert "departures from the papers" not in summary  # ours keeps its reference findings section only
    assert "peft's layers" in section(summary, "Reference findings")
    timing = section(summary, TIMING)
    assert "| variant | fwd+bwd ours/peft | fwd+bwd ours/base | peak MB base / ours / peft |" in timing
    assert "| lora | 0.9 |" in timing and "/ 1.2 / -" in timing
    anti = (tmp_path / "antipasto.md").read_text()
    assert "Subject audited: **ours (variants/)**" in anti and "implementation `variants.antipasto`" in anti
    assert "Judged against: the paper's formula and antipasto3 (independent port)." in anti
    code = section(anti, "What the code does")
    assert re.search(r"at `variants/antipasto\.py:\d+`", code)


def test_an_older_results_json_names_ours_and_infers_references(tmp_path):
    report.render_summary(tmp_path, {"seed": 0}, passing("lora"), verdict.verdicts(passing("lora")))
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "**Subject audited: ours (variants/)**" in text and "predates the subject record" in text
    assert "**Judged against:** the paper's formula and peft on lora. (Not recorded in this results.json" in text


class _Driver(__import__("audit.subjects", fromlist=["Subject"]).Subject):
    label = "toylib 1.0"
    tensor_names = {"lora": {"A": "down", "B": ("up", "transpose")}}

    def attach(self, model, method, cfg, calibration):
        return model  # toylib's attach

    def adapted_layers(self, model):
        return {}


class _Bare(__import__("audit.subjects", fromlist=["Subject"]).Subject):
    label = "bare"


def test_a_drivers_code_is_the_driver_or_says_there_is_none(tmp_path):
    drv = runner.Target(get("lora"), _Driver, "tests/test_report.py:_Driver", "tests/test_report.py:_Driver")
    ex, note = report_subject.subject_excerpts(drv)
    assert [e["method"] for e in ex] == ["_Driver.attach", "_Driver.adapted_layers", "_Driver.tensor_names['lora']"]
    assert "toylib's attach" in ex[0]["code"] and ex[0]["where"].startswith("tests/test_report.py:")
    assert "'B': ('up', 'transpose')" in ex[2]["code"]
    assert note.startswith("The driver `tests/test_report.py:_Driver` (toylib 1.0)")
    ex, note = report_subject.subject_excerpts(runner.Target(get("lora"), _Bare, "tests:_Bare"))
    assert ex == [] and note.startswith("No source excerpt is available for bare")
    from audit.subjects.peft import Peft
    ex, note = report_subject.subject_excerpts(runner.Target(get("antipasto"), Peft(), "peft"))
    assert ex == [] and note.startswith("No source excerpt is available for peft")
    rows = [r for r in passing("lora") if r.check != "timing"]
    text = report.render_variant(report._env(), drv, report._meta({**META, "subject": {
        "kind": "third-party", "label": "toylib 1.0", "references": {"lora": ["paper", "peft"]}}}),
        rows, verdict.verdicts(rows)["lora"])
    assert "Subject audited: **toylib 1.0**" in text and "implementation `tests/test_report.py:_Driver`" in text
    assert "Judged against: the paper's formula and peft p." in text


def test_an_installed_library_is_shown_from_its_package_even_inside_the_checkout(tmp_path, monkeypatch):
    """A nox venv lives inside the checkout: peft's file must still read peft/..., not .nox/tests/lib/..."""
    from audit.report_subject import _display_path
    monkeypatch.chdir(tmp_path)
    inside = tmp_path / ".nox" / "tests" / "lib" / "python3.11" / "site-packages" / "peft" / "tuners" / "x.py"
    assert _display_path(str(inside), "peft.tuners.x") == "peft/tuners/x.py"
    assert _display_path(str(tmp_path / "audit" / "report.py"), "audit.report") == "audit/report.py"


def _r(check, model, dtype, status, metric="m", value=0.5, config="main", variant="lora"):
    return Row(variant, check, model, dtype, metric, value, 1.0 if status != "error" else None, status, config=config)


def test_a_summary_cell_shows_a_bf16_only_failure_as_such():
    from audit.report_summary import check_cell
    rows = [_r("paper_parity", m, d, "error" if d == "bfloat16" else "pass") for m in ("qwen3", "gpt2")
            for d in ("float32", "bfloat16")]
    assert check_cell(rows) == "pass 0.5 fp32 · **error** bf16"
    rows = [_r("paper_parity", m, "float32", "fail" if m == "gpt2" else "pass", value=2.0 if m == "gpt2" else 0.5)
            for m in ("qwen3", "gpt2", "llama")]
    assert check_cell(rows) == "**fail 2** gpt2 · pass 0.5 elsewhere"
    assert check_cell([_r("paper_parity", "qwen3", "float32", "pass")]) == "pass 0.5"


def test_failure_patterns_name_what_the_failing_cells_share():
    from audit.diagnosis import cell_pattern, forward_vs_merge
    models = ("qwen3", "qwen2", "llama", "mlp", "gpt2", "phi3")
    biased = {"qwen2", "mlp", "gpt2"}
    rows = [_r("paper_parity", m, "float32", "fail" if m in biased else "pass") for m in models]
    words = cell_pattern([r for r in rows if r.status == "fail"], rows)
    assert words == ["only on models with layers with a bias: gpt2, mlp, qwen2"]
    rows = [_r("paper_parity", m, d, "fail" if d == "bfloat16" else "pass") for m in models for d in ("float32", "bfloat16")]
    assert cell_pattern([r for r in rows if r.status == "fail"], rows) == ["only in bfloat16 (float32 passes)"]
    rows = [_r("paper_parity", "mlp", "float32", "fail", config="rslora"), _r("paper_parity", "mlp", "float32", "pass")]
    assert cell_pattern(rows[:1], rows) == ["only under config rslora (alpha8-r4 passes)"]
    merge_wrong = [_r("paper_parity", "qwen3", "float32", "pass"),
                   _r("merge", "qwen3", "float32", "fail", metric="merged_weight_rel_err_vs_paper")]
    assert forward_vs_merge(merge_wrong).endswith("the merge is wrong")
    forward_wrong = [_r("paper_parity", "qwen3", "float32", "fail"),
                     _r("merge", "qwen3", "float32", "pass", metric="merged_weight_rel_err_vs_paper")]
    assert forward_vs_merge(forward_wrong).endswith("the forward is wrong, the merge right")


def test_a_declared_departure_that_stopped_the_comparison_is_named_and_conformant_concerns_stay_plain():
    """OFT in LyCORIS: a declared layout departure (xfail) leaves no parity row to judge, so the equation is
    not audited, and the headline and SUMMARY cell say which declared departure stopped it; a conformant
    concern beside a partial one reads "conformant", never listing the checks that passed as declared."""
    stopped = [row("oft", "layout", "canonical_shape_mismatch", 1.0, 0.0, status="xfail", deviation="lib-oft-side"),
               row("oft", "identity_at_init", "logits_rel_err", 0.0, 1e-6),
               row("oft", "paper_parity", "output_rel_err", None, None, status="n/a"),
               row("oft", "save_load", "missing_key_refused", 0.0, 1.0, op="==", status="xfail", deviation="d")]
    v = verdict.verdict_of(stopped)
    assert v["verdict"] == "not audited" and v["deciding_concerns"] == ["equation"]
    assert "equation not audited (declared: layout)" in v["headline"]
    from audit.report_summary import concern_cell
    assert concern_cell(v["concerns"]["equation"]) == "not audited (declared: layout)"
    assert concern_cell(None) == "-"
    mixed = verdict.verdict_of(passing("lora") + [row("lora", "save_load", "missing_key_refused", 0.0, 1.0, op="==",
                                                      status="xfail", deviation="d")])
    assert mixed["verdict"] == "partial"
    assert "equation conformant," in mixed["headline"] and "declared" not in mixed["headline"]
