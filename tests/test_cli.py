"""The command line: exit codes, input validated before any model is built, --impl in both forms,
Ctrl-C, file permissions, stale reports, gate/baseline/mutants/seeds on missing or foreign files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from audit import cli, gate, local_models, models, results, runner

REPO = Path(__file__).resolve().parents[1]
MUTANT = REPO / "tests" / "mutants" / "lora_alpha_not_divided.py"
TINY = ["--models", "mlp", "--dtypes", "float32", "--quiet", "--jobs", "1"]


# -- helpers -----------------------------------------------------------------------------------------

@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if anything builds or loads a model, or starts the run."""
    def refuse(*a, **k):
        raise AssertionError("a model was built / the run started before the input was validated")
    monkeypatch.setattr(models, "build", refuse)
    monkeypatch.setattr(local_models, "load_local", refuse)
    monkeypatch.setattr(runner, "run", refuse)


def usage_error(capsys, argv: list[str], command: str = "run") -> str:
    """Run the CLI in-process; it must exit 2 with argparse's ``prog: error: msg``. Returns stderr."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert f"python -m audit {command}: error:" in err, err
    assert "Traceback" not in err
    return err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


class Captured(Exception):
    pass


@pytest.fixture
def captured_plan(monkeypatch):
    """Stop the run at runner.run and hand back the validated plan (no model is built)."""
    box = {}

    def fake_run(plan, progress=True, jobs=1):
        box["plan"] = plan
        raise Captured
    monkeypatch.setattr(runner, "run", fake_run)
    return box


# -- bad input: exit 2, named, before any model --------------------------------------------------------

@pytest.mark.parametrize("argv,needles", [
    (["--dtypes", "float8"], ["unknown dtype", "float8", "float32, bfloat16, float16"]),
    (["--dtypes", "bf16,fp16", "--variants", "lora"], ["float16", "not supported by any selected card",
                                                       "lora: float32, bfloat16"]),
    (["--dtypes", ""], ["--dtypes is empty"]),
    (["--variants", "nope,lora"], ["unknown variant", "nope", "lora, pissa"]),
    (["--variants", ","], ["--variants is empty"]),
    (["--checks", "nope"], ["unknown check", "nope", "identity_at_init"]),
    (["--models", "gpt9"], ["unknown model", "gpt9", "qwen3"]),
    (["--models", ""], ["nothing to audit: --models is empty and no --model-path given"]),
    (["--jobs", "0"], ["--jobs must be >= 1"]),
    (["--impl", "x.py:Y"], ["--impl needs --card"]),
    (["--card", "lora"], ["--card is only used with --impl"]),
    (["--impl", f"{MUTANT}:LoraAlphaScale", "--card", "lorra"], ["--card 'lorra': no such card", "lora"]),
    (["--impl", f"{MUTANT}:LoraAlphaScale", "--card", "lora", "--variants", "dora"], ["cannot be combined"]),
    (["--impl", "nocolon", "--card", "lora"], ["MODULE:CLASS or FILE.py:CLASS"]),
    (["--impl", "/no/such/file.py:X", "--card", "lora"], ["file not found"]),
    (["--impl", "no_such_module_xyz:X", "--card", "lora"], ["no module named 'no_such_module_xyz'"]),
    (["--impl", f"{MUTANT}:Nope", "--card", "lora"], ["has no attribute 'Nope'"]),
    (["--impl", f"{MUTANT}:Mutant", "--card", "lora"], ["not a subclass of variants.Variant"]),
])
def test_bad_input_exits_2_before_any_model(tmp_path, capsys, no_models, argv, needles):
    err = usage_error(capsys, ["run", "--out", str(tmp_path / "out"), *argv])
    for n in needles:
        assert n in err
    assert not (tmp_path / "out").exists(), "--out is created only once every other input is valid"


def test_impl_whose_import_raises_is_a_usage_error(tmp_path, capsys, no_models):
    impl = write(tmp_path / "crashy.py", "raise RuntimeError('boom at import')\n")
    err = usage_error(capsys, ["run", "--out", str(tmp_path / "o"), "--impl", f"{impl}:X", "--card", "lora"])
    assert "RuntimeError: boom at import" in err
    bad = write(tmp_path / "syntax_bad.py", "def (:\n")
    err = usage_error(capsys, ["run", "--out", str(tmp_path / "o"), "--impl", f"{bad}:X", "--card", "lora"])
    assert "SyntaxError" in err
    assert "_audit_impl_crashy" not in sys.modules and "_audit_impl_syntax_bad" not in sys.modules


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """Folders a user might pass as --model-path, none of them an auditable causal LM."""
    from transformers import BertConfig
    root = tmp_path_factory.mktemp("ckpts")
    (root / "no_config").mkdir()
    (root / "no_config" / "model.safetensors").write_bytes(b"")
    from transformers import ViTConfig
    bert = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=48)
    bert.architectures = ["MyRemoteBert"]  # a class only the checkpoint's own code defines
    bert.save_pretrained(root / "remote_code")
    vit = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, image_size=8,
                    patch_size=4)
    vit.architectures = ["ViTModel"]
    vit.save_pretrained(root / "vision")
    for name in ("remote_code", "vision"):
        (root / name / "model.safetensors").write_bytes(b"")  # never read: validation is config-only
    (root / "a_file.bin").write_bytes(b"x")
    return root


@pytest.mark.parametrize("which,needles", [
    ("missing", ["not a folder and not in the local Hugging Face cache"]),
    ("no-such-org/no-such-model-xyz", ["not a folder and not in the local Hugging Face cache"]),
    ("no_config", ["no config.json"]),
    ("remote_code", ["MyRemoteBert", "not transformers classes", "trust_remote_code"]),
    ("vision", ["ViTModel", "takes no token ids"]),
    ("a_file.bin", ["is a file, not a checkpoint folder"]),
])
def test_bad_model_path_exits_2_before_any_model(tmp_path, capsys, no_models, bad_checkpoints, which, needles):
    path = which if "/" in which else str(bad_checkpoints / which)
    err = usage_error(capsys, ["run", "--out", str(tmp_path / "o"), "--variants", "lora", "--models", "",
                               "--model-path", path, "--dtypes", "float32"])
    assert "--model-path" in err
    for n in needles:
        assert n in err


@pytest.mark.parametrize("name,cls", [("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")])
def test_a_real_checkpoint_passes_validation(tmp_path, name, cls):
    ckpt = tmp_path / name  # gpt2: transformers Conv1D projections, adapted like nn.Linear
    models.build(name).save_pretrained(ckpt)
    assert local_models.check_local(str(ckpt)) == local_models.LocalModel(cls, local_models.LOGITS)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no weights"):
        local_models.check_local(str(ckpt))


def test_out_that_is_a_file_or_under_a_file_is_refused(tmp_path, capsys, no_models):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    err = usage_error(capsys, ["run", "--out", str(f), "--variants", "lora", *TINY])
    assert "exists and is not a folder" in err
    err = usage_error(capsys, ["run", "--out", str(f / "sub"), "--variants", "lora", *TINY])
    assert "cannot create the folder" in err


def test_out_not_writable_is_refused(tmp_path, capsys, no_models):
    """A read-only folder; as root (who writes anywhere chmod allows) a procfs folder, where no one can
    create a file."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        assert Path("/proc/self").is_dir(), "this test needs a folder even root cannot write into"
        ro = Path("/proc/self")
    try:
        err = usage_error(capsys, ["run", "--out", str(ro), "--variants", "lora", *TINY])
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert "not writable" in err


def test_valid_input_is_normalised(tmp_path, captured_plan):
    out = tmp_path / "a" / "b" / "c"
    with pytest.raises(Captured):
        cli.main(["run", "--out", str(out), "--variants", "lora,,lora,hra", "--dtypes", "fp32,bf16,float32",
                  "--checks", "paper_parity,paper_parity", "--models", "mlp,mlp", "--quiet"])
    plan = captured_plan["plan"]
    assert [t.card.name for t in plan.targets] == ["lora", "hra"]
    assert plan.dtypes == ["float32", "bfloat16"]
    assert plan.checks == ["paper_parity"] and plan.models == ["mlp"]
    assert out.is_dir() and not list(out.iterdir()), "--out created (parents too), probe file removed"


def test_dtype_aliases():
    assert cli.normalise_dtypes(["bf16", "FP32", "f32", "fp16", "half", "bfloat16"]) == \
        ["bfloat16", "float32", "float16"]
    from audit.cell import DTYPES
    assert cli.DTYPES == tuple(DTYPES)


def test_models_empty_with_a_model_path_audits_only_the_path(tmp_path, captured_plan):
    ckpt = tmp_path / "ckpt"
    models.build("llama").save_pretrained(ckpt)
    with pytest.raises(Captured):
        cli.main(["run", "--out", str(tmp_path / "o"), "--variants", "lora", "--models", "",
                  "--model-path", str(ckpt), "--dtypes", "float32", "--quiet"])
    plan = captured_plan["plan"]
    assert plan.models == ["path:ckpt"] and set(plan.model_factories) == {"path:ckpt"}


# -- --impl in both forms ----------------------------------------------------------------------------

IMPL = '''
from {helper} import SCALE_DIVIDES
from variants.lora import Lora

class Mine(Lora):
    """A user's LoRA that imports a sibling module."""
    if not SCALE_DIVIDES:
        @staticmethod
        def scale(cfg, r):
            return cfg.alpha
'''


def _user_package(root: Path, divides: bool = True) -> tuple[Path, str]:
    tag = uuid.uuid4().hex[:8]
    helper = f"user_helper_{tag}"
    write(root / f"{helper}.py", f"SCALE_DIVIDES = {divides}\n")
    impl = write(root / f"user_impl_{tag}.py", IMPL.format(helper=helper))
    return impl, tag


def test_impl_file_form_imports_siblings_from_anywhere(tmp_path, monkeypatch):
    impl, tag = _user_package(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)  # not the impl's folder
    before = list(sys.path)
    cls = cli.load_impl(f"{impl}:Mine")
    from variants.lora import Lora
    assert issubclass(cls, Lora) and cls.__name__ == "Mine"
    assert sys.path == before, "the impl's folder is on sys.path only while it loads"


def test_impl_module_form_imports_from_the_current_folder(tmp_path, monkeypatch):
    impl, tag = _user_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    cls = cli.load_impl(f"user_impl_{tag}:Mine")
    assert cls.__module__ == f"user_impl_{tag}"


def test_impl_module_form_runs_clean_and_exits_0(tmp_path, monkeypatch):
    impl, tag = _user_package(tmp_path / "pkg")
    monkeypatch.chdir(tmp_path / "pkg")
    code = cli.main(["run", "--out", str(tmp_path / "out"), "--impl", f"user_impl_{tag}:Mine", "--card", "lora",
                     "--checks", "paper_parity", *TINY])
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["verdicts"]["lora"]["verdict"] in ("conformant", "partial")
    assert code == 0


def test_planted_bug_via_impl_exits_1(tmp_path):
    code = cli.main(["run", "--out", str(tmp_path / "out"), "--impl", f"{MUTANT}:LoraAlphaScale", "--card", "lora",
                     "--checks", "paper_parity", *TINY])
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["verdicts"]["lora"]["verdict"] == "non-conformant"
    assert code == 1


def test_planted_bug_in_a_sibling_imported_file_exits_1(tmp_path):
    impl, _ = _user_package(tmp_path / "buggy", divides=False)
    assert cli.main(["run", "--out", str(tmp_path / "out"), "--impl", f"{impl}:Mine", "--card", "lora",
                     "--checks", "paper_parity", *TINY]) == 1


# -- exit codes --------------------------------------------------------------------------------------

def test_clean_run_exits_0_with_usual_permissions_and_no_stale_reports(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dora.md").write_text("# dora: conformant (confidence high)\n\nold report\n")
    (out / "hra.md").write_text("notes I wrote myself\n")       # not ours: kept
    (out / "notes.md").write_text("# my notes\n")               # not a card: kept
    old = os.umask(0o027)
    try:
        code = cli.main(["run", "--out", str(out), "--variants", "lora", "--checks", "paper_parity", *TINY])
    finally:
        os.umask(old)
    assert code == 0
    assert not (out / "dora.md").exists()
    assert (out / "hra.md").exists() and (out / "notes.md").exists() and (out / "lora.md").exists()
    for name in ("results.json", "SUMMARY.md", "lora.md"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_error_rows_exit_1(tmp_path, monkeypatch):
    from audit.checks import paper_parity

    def boom(cell):
        raise RuntimeError("planted crash")
    monkeypatch.setattr(paper_parity, "run", boom)
    code = cli.main(["run", "--out", str(tmp_path / "out"), "--variants", "lora", "--checks", "paper_parity", *TINY])
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any(r["status"] == "error" for r in doc["rows"])
    assert code == 1


def _row(status, about="subject"):
    return SimpleNamespace(status=status, about=about)


@pytest.mark.parametrize("rows,verdict,code", [
    ([_row("pass")], "conformant", 0),
    ([_row("xfail")], "partial", 0),
    ([_row("n/a")], "not audited", 0),
    ([_row("pass"), _row("fail", "reference")], "conformant", 0),   # a finding about peft, not us
    ([_row("pass"), _row("error", "reference")], "conformant", 1),  # errors always count
    ([_row("pass"), _row("error")], "non-conformant", 1),
    ([_row("fail")], "non-conformant", 1),
    ([_row("fail")], "conformant", 1),  # a subject failure counts whatever the verdict says
    ([SimpleNamespace(status="pass")], "non-conformant", 1),  # rows without `about` (older Row)
    ([{"status": "error"}], "conformant", 1),                 # rows as dicts (results.json)
])
def test_run_exit_code(rows, verdict, code):
    assert cli.run_exit_code(rows, {"lora": {"verdict": verdict}}) == code


# -- files: permissions, stale reports ---------------------------------------------------------------

@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_follows_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        assert results.current_umask() == mask
        results.atomic_write(tmp_path / "x" / "f.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "x" / "f.json").stat().st_mode & 0o777 == mode
    assert os.listdir(tmp_path / "x") == ["f.json"]


def test_remove_stale_reports_only_touches_generated_card_reports(tmp_path):
    (tmp_path / "dora.md").write_text("# dora: non-conformant\n")
    (tmp_path / "road.md").write_text("# road: conformant\n")
    (tmp_path / "lora.md").write_text("# lora: conformant\n")
    (tmp_path / "hra.md").write_text("hand written\n")
    (tmp_path / "SUMMARY.md").write_text("# adapter-audit summary\n")
    (tmp_path / "mine.md").write_text("# mine\n")
    removed = cli.remove_stale_reports(tmp_path, {"lora"})
    assert sorted(p.name for p in removed) == ["dora.md", "road.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SUMMARY.md", "hra.md", "lora.md", "mine.md"]


# -- gate, baseline, mutants, seeds: missing and foreign files -----------------------------------------

def _doc(seed=0, **verdicts):
    rows = [{"variant": v, "check": "paper_parity", "model": "mlp", "dtype": "float32", "metric": "m",
             "value": 0.0, "tolerance": 1e-6, "op": "<=", "status": "pass", "deviation": ""} for v in verdicts]
    return {"meta": {"seed": seed}, "rows": rows, "verdicts": {v: {"verdict": x} for v, x in verdicts.items()}}


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_doc(lora="conformant")))
    (tmp_path / "text.json").write_text("this is not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "number.json").write_text("5")
    (tmp_path / "other.json").write_text(json.dumps({"name": "some other tool"}))
    (tmp_path / "badrows.json").write_text(json.dumps({"meta": {}, "rows": [{"x": 1}], "verdicts": {}}))
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81")
    return tmp_path


@pytest.mark.parametrize("name,needle", [
    ("missing.json", "results file not found"),
    ("text.json", "not valid JSON"),
    ("list.json", "not an adapter-audit results.json"),
    ("number.json", "not an adapter-audit results.json"),
    ("other.json", "missing top-level key 'meta'"),
    ("badrows.json", "row 0 lacks variant"),
    ("binary.json", "adapter-audit results.json"),
    (".", "is a folder"),
])
def test_gate_refuses_missing_or_foreign_files(files, capsys, name, needle):
    bad = str(files / name)
    good = str(files / "good.json")
    err = usage_error(capsys, ["gate", "--baseline", good, "--results", bad], "gate")
    assert needle in err and "--results" in err
    err = usage_error(capsys, ["gate", "--baseline", bad, "--results", good], "gate")
    assert needle in err and "--baseline" in err


def test_gate_cli_compares_good_files(files, capsys):
    good = str(files / "good.json")
    assert cli.main(["gate", "--baseline", good, "--results", good]) == 0
    worse = files / "worse.json"
    doc = _doc(lora="non-conformant")
    doc["rows"][0]["status"] = "fail"
    worse.write_text(json.dumps(doc))
    assert cli.main(["gate", "--baseline", good, "--results", str(worse)]) == 1
    assert "verdict dropped" in capsys.readouterr().out


def test_baseline_and_mutants_refuse_missing_results(files, capsys, monkeypatch):
    from audit import mutants
    monkeypatch.setattr(mutants, "run_corpus", lambda *a, **k: pytest.fail("corpus run before the check"))
    err = usage_error(capsys, ["baseline", "--results", str(files / "missing.json"),
                               "--out", str(files / "b.json")], "baseline")
    assert "results file not found" in err and not (files / "b.json").exists()
    err = usage_error(capsys, ["baseline", "--results", str(files / "other.json"),
                               "--out", str(files / "b.json")], "baseline")
    assert "missing top-level key" in err
    assert cli.main(["baseline", "--results", str(files / "good.json"), "--out", str(files / "b.json")]) == 0
    assert json.loads((files / "b.json").read_text())["verdicts"] == {"lora": {"verdict": "conformant", "concerns": {}}}
    foreign = files / "foreign_out"
    foreign.mkdir()
    (foreign / "results.json").write_text("this is not json")
    err = usage_error(capsys, ["mutants", "--out", str(foreign)], "mutants")
    assert "not valid JSON" in err and "--out" in err


def test_mutants_needs_no_previous_audit(tmp_path, capsys):
    """`mutants --out DIR` on an empty folder audits the corpus and writes mutants.json; SUMMARY.md is left
    to a `run` there, which the message names (and which then shows the kill table)."""
    import shutil
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(MUTANT, corpus)
    out = tmp_path / "fresh" / "out"
    assert cli.main(["mutants", "--out", str(out), "--corpus", str(corpus), "--quiet"]) == 0
    doc = json.loads((out / "mutants.json").read_text())
    assert (doc["killed"], doc["total"]) == (1, 1) and not (out / "SUMMARY.md").exists()
    said = capsys.readouterr().out
    assert "kill rate 1/1" in said and f"python -m audit run --out {out}" in said
    assert cli.main(["run", "--out", str(out), "--variants", "lora", "--models", "mlp", "--dtypes", "float32",
                     "--checks", "identity_at_init", "--configs", "main", "--quiet"]) == 0
    assert "Kill rate: 1/1" in (out / "SUMMARY.md").read_text()


def test_compare_seeds_agreeing_and_not():
    ok, text = gate.compare_seeds([_doc(0, lora="conformant", dora="partial"),
                                   _doc(1, lora="conformant", dora="partial")])
    assert ok and "seed 0" in text and "seed 1" in text and "PASS" in text
    ok, text = gate.compare_seeds([_doc(0, lora="conformant"), _doc(1, lora="partial")])
    assert not ok and "differ" in text and "lora" in text
    ok, text = gate.compare_seeds([_doc(0, lora="not audited"), _doc(1, lora="not audited")])
    assert not ok and "not audited" in text
    ok, text = gate.compare_seeds([_doc(0, lora="non-conformant"), _doc(1, lora="non-conformant")])
    assert not ok
    ok, text = gate.compare_seeds([_doc(0, lora="conformant", hra="conformant"), _doc(1, lora="conformant")])
    assert not ok and "missing" in text
    ok, _ = gate.compare_seeds([])
    assert not ok


def test_seeds_cli(tmp_path, capsys):
    paths = []
    for seed, v in enumerate(["conformant", "conformant", "partial"]):
        p = tmp_path / f"s{seed}.json"
        p.write_text(json.dumps(_doc(seed, lora="conformant", dora=v)))
        paths.append(str(p))
    assert cli.main(["seeds", "--results", *paths[:2]]) == 0
    out = capsys.readouterr().out
    assert "seed 0" in out and "seed 1" in out and "dora" in out
    assert cli.main(["seeds", "--results", *paths]) == 1
    out = capsys.readouterr().out
    assert "differs" in out and "dora" in out
    err = usage_error(capsys, ["seeds", "--results", paths[0], str(tmp_path / "nope.json")], "seeds")
    assert "results file not found" in err


def test_gate_verdict_ranks_know_not_audited():
    base = _doc(lora="not audited")
    rep = gate.compare(base, _doc(lora="not audited"))
    assert rep.ok
    rep = gate.compare(_doc(lora="conformant"), _doc(lora="not audited"))
    assert not rep.ok and any("verdict" in c for c, *_ in rep.regressions)


# -- help ------------------------------------------------------------------------------------------

def test_run_help_lists_models_dtypes_checks_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    from audit.checks import CHECK_ORDER
    for word in (*models.ZOO, *cli.DTYPES, *CHECK_ORDER, "bf16", '--models ""', "exit codes", "130", "non-conformant"):
        assert word in out, word
    for opt in ("--out", "--variants", "--models", "--dtypes", "--checks", "--device", "--seed", "--model-path",
                "--impl", "--card", "--jobs", "--quiet"):
        assert opt in out


# -- Ctrl-C ------------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _is_worker(pid: int, parent_cmd: str) -> bool:
    """A live pool worker: spawned (multiprocessing's spawn_main) or forked (the parent's command line);
    a reaped or zombie process has an empty command line."""
    cmd = _cmdline(pid)
    return bool(cmd) and ("spawn_main" in cmd or cmd == parent_cmd)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_a_parallel_run_cleanly(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit", "run", "--out", str(out), "--variants",
         "lora,dora,hra,delora,road,oft,lokr,loha,vera,adalora", "--models", "qwen3,llama,mlp,qwen2,phi3,gpt2",
         "--dtypes", "float32,bfloat16", "--checks", "timing,training,peft_parity",
         "--jobs", "2"],  # ~60 s of work: still running when interrupted
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a test runner started in the background (`cmd &` without job control) ignores SIGINT, and
        # the ignore would be inherited: the run under test starts with Ctrl-C live, as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        workers: list[int] = []
        parent_cmd = ""
        while time.monotonic() - t0 < 90 and proc.poll() is None:  # wait for the pool to be working
            parent_cmd = parent_cmd or _cmdline(proc.pid)
            workers = [c for c in _children(proc.pid) if _is_worker(c, parent_cmd)]
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert len(workers) >= 2, "the parallel pool never started"
        time.sleep(1.0)  # workers are auditing
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        t_int = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t_int
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert took < 10, f"took {took:.1f}s to stop"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted; nothing written" in err
    assert not (out / "results.json").exists()
    leftovers = [p.name for p in out.rglob("*")] if out.exists() else []
    assert not leftovers, f"the interrupted run left {leftovers}"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_is_worker(w, parent_cmd) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _is_worker(w, parent_cmd)], \
        "worker processes outlived the interrupted run"


def test_a_peft_release_that_does_not_import_is_a_usage_error(tmp_path):
    """A peft that raises on import (peft 0.16 under transformers 5: HybridCache is gone) exits 2 naming the
    release, transformers' version and the import error, before any work and without a traceback."""
    site = tmp_path / "site"
    (site / "peft").mkdir(parents=True)
    (site / "peft" / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'HybridCache' from 'transformers'\")\n")
    (site / "peft-0.16.0.dist-info").mkdir()
    (site / "peft-0.16.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: peft\nVersion: 0.16.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "audit", "run", "--subject", "peft", "--out", str(out), *TINY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "peft 0.16.0 does not import with transformers" in proc.stderr
    assert "HybridCache" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
