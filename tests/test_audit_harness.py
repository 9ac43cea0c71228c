"""The harness itself: --impl from a file outside the repo, determinism, --model-path, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audit import cli, models

REPO = Path(__file__).resolve().parents[1]
FAST = ["--models", "mlp", "--dtypes", "float32", "--checks", "identity_at_init,grad_flow,paper_parity,save_load",
        "--quiet"]


def run_audit(tmp_path: Path, *args: str, code: int = 0) -> dict:
    """Run the audit in-process; ``code`` is the expected exit code (1: non-conformant or error rows)."""
    out = tmp_path / "out"
    assert cli.main(["run", "--out", str(out), *args]) == code
    return json.loads((out / "results.json").read_text())


def test_impl_from_a_file_outside_the_repo_is_audited(tmp_path):
    impl = tmp_path / "elsewhere" / "my_lora.py"
    impl.parent.mkdir()
    impl.write_text(textwrap.dedent('''
        import variants
        from variants.lora import Lora

        class GoodLora(Lora):
            """A user's LoRA: subclasses the protocol, defined outside the repo."""

        class ScaleBugLora(Lora):
            """alpha instead of alpha / r: paper parity must catch it."""
            @staticmethod
            def scale(cfg, r):
                return cfg.alpha
    '''))
    good = run_audit(tmp_path, "--impl", f"{impl}:GoodLora", "--card", "lora", *FAST)
    assert good["verdicts"]["lora"]["verdict"] == "conformant"
    assert good["meta"]["implementations"]["lora"].endswith("my_lora.py:GoodLora")
    bad = run_audit(tmp_path, "--impl", f"{impl}:ScaleBugLora", "--card", "lora", *FAST, code=1)
    failing = {(r["check"], r["metric"]) for r in bad["rows"] if r["status"] == "fail"}
    assert ("paper_parity", "output_rel_err") in failing
    assert bad["verdicts"]["lora"]["verdict"] == "non-conformant"


def test_same_seed_same_rows(tmp_path):
    args = ["--variants", "hra,road", "--models", "qwen3", "--dtypes", "float32,bfloat16", "--quiet"]
    a = run_audit(tmp_path / "a", *args)
    b = run_audit(tmp_path / "b", *args)
    strip = lambda rows: [r for r in rows if r["check"] != "timing"]
    assert strip(a["rows"]) == strip(b["rows"])
    assert len(strip(a["rows"])) > 50


def test_every_check_reports_and_a_crash_becomes_an_error_row(tmp_path, monkeypatch):
    from audit.checks import save_load

    def boom(cell):
        raise RuntimeError("planted crash")

    monkeypatch.setattr(save_load, "run", boom)
    doc = run_audit(tmp_path, "--variants", "lora", "--models", "mlp", "--dtypes", "float32", "--quiet", "--jobs", "1",
                    code=1)
    checks = {r["check"] for r in doc["rows"]}
    from audit.checks import CHECK_ORDER
    assert checks == set(CHECK_ORDER)
    errors = [r for r in doc["rows"] if r["status"] == "error"]
    assert [r["check"] for r in errors] == ["save_load"] and "planted crash" in errors[0]["message"]
    assert (tmp_path / "out" / "SUMMARY.md").exists() and (tmp_path / "out" / "lora.md").exists()


def test_model_path_audits_a_local_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    models.build("llama").save_pretrained(ckpt)
    doc = run_audit(tmp_path, "--variants", "lora", "--models", "mlp", "--model-path", str(ckpt),
                    "--dtypes", "float32", "--checks", "identity_at_init,save_load", "--quiet")
    rows = [r for r in doc["rows"] if r["model"] == "path:ckpt"]
    assert rows and all(r["status"] == "pass" for r in rows)


def test_model_path_that_is_not_local_fails_clearly():
    with pytest.raises(ValueError, match="not a directory and is not in the local HF cache"):
        models.load_local("no-such-org/no-such-model-xyz")


# Bad command-line input (exit 2, named, before any model is built): tests/test_cli.py.


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "audit", "run", "--help"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    for opt in ("--out", "--variants", "--models", "--dtypes", "--checks", "--device", "--model-path", "--impl", "--card"):
        assert opt in out


def test_parallel_and_serial_runs_give_the_same_rows(tmp_path):
    args = ["--variants", "lora,hra,road", "--models", "mlp", "--dtypes", "float32", "--quiet",
            "--checks", "identity_at_init,grad_flow,paper_parity,save_load"]
    serial = run_audit(tmp_path / "s", *args, "--jobs", "1")
    parallel = run_audit(tmp_path / "p", *args, "--jobs", "2")
    assert parallel["meta"]["jobs"] == 2 and serial["meta"]["jobs"] == 1
    assert serial["rows"] == parallel["rows"] and len(serial["rows"]) > 30
