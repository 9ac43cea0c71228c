"""The harness itself: --impl from a file outside the repo, determinism, --model-path, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audit import cli, local_models, models

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
                    "--configs", "main", code=1)
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
    with pytest.raises(ValueError, match="not a folder and not in the local Hugging Face cache"):
        local_models.load_local("no-such-org/no-such-model-xyz")


def _encoder(folder: Path) -> Path:
    """A tiny BertModel (an encoder with no head, as sentence-embedding models are) saved from a
    BertConfig with a fixed seed; biases drawn non-zero, as the zoo's, so bias bugs show."""
    import torch
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=96, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.uniform_(-0.1, 0.1)
    model.save_pretrained(folder)
    return folder


def test_an_encoder_without_a_head_is_audited_on_its_hidden_states(tmp_path):
    """`--model-path` on a BertModel folder: every projection (query/key/value, attention.output.dense,
    intermediate.dense, N.output.dense) adapted, the final hidden states audited, and the reports say so."""
    ckpt = _encoder(tmp_path / "bert")
    assert local_models.check_local(str(ckpt)) == local_models.LocalModel("BertModel", local_models.HIDDEN_STATES)
    import variants
    from audit.roles import ALL_ROLES, expected_modules
    model = local_models.load_local(str(ckpt))
    layer = "encoder.layer.0."
    every = {layer + n for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                                 "attention.output.dense", "intermediate.dense", "output.dense")}
    assert expected_modules(model, ALL_ROLES) == every  # the audit's own reading of the names (not the pooler)
    assert set(variants.state_of(variants.attach(model, variants.config("lora", r=4))).targets) == every
    doc = run_audit(tmp_path, "--model-path", str(ckpt), "--variants", "lora,dora", "--models", "", "--quiet")
    assert {v: d["verdict"] for v, d in doc["verdicts"].items()} == {"lora": "conformant", "dora": "conformant"}
    placed = {r["metric"]: r for r in doc["rows"] if r["check"] == "placement" and r["status"] == "pass"}
    assert placed["missing_targets"]["value"] == 0 == placed["unexpected_targets"]["value"]
    judged = {r["check"] for r in doc["rows"] if r["status"] == "pass"}
    assert {"identity_at_init", "paper_parity", "peft_parity", "training", "merge", "save_load"} <= judged
    note = "BertModel; no head, so the audited output is its final hidden states"
    assert note in (tmp_path / "out" / "SUMMARY.md").read_text() and note in (tmp_path / "out" / "lora.md").read_text()


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


def test_workers_are_spawned_not_forked_once_cuda_is_in_play(monkeypatch):
    """A process forked after its parent touched CUDA fails ("CUDA error: initialization error"): a run on
    CUDA, or after this process initialised CUDA, starts its workers with spawn."""
    import multiprocessing

    import torch

    from audit import workers
    assert workers.start_method("cuda") == "spawn"
    fork = "fork" in multiprocessing.get_all_start_methods()
    assert workers.start_method("cpu") == ("fork" if fork else "spawn")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert workers.start_method("cpu") == "spawn"


def test_spawned_workers_give_the_rows_of_a_serial_run(tmp_path, monkeypatch):
    """What a --device cuda --jobs 2 run uses, checked on the CPU: spawned workers (nothing inherited from
    the parent) audit the same rows as a serial run."""
    from audit import workers
    args = ["--variants", "lora,eva", "--models", "mlp", "--dtypes", "float32", "--quiet",
            "--checks", "identity_at_init,init,paper_parity"]
    serial = run_audit(tmp_path / "s", *args, "--jobs", "1")
    monkeypatch.setattr(workers, "start_method", lambda device: "spawn")
    spawned = run_audit(tmp_path / "p", *args, "--jobs", "2")
    assert spawned["meta"]["jobs"] == 2 and serial["rows"] == spawned["rows"] and len(serial["rows"]) > 20


def test_a_classifier_and_an_encoder_decoder_are_audited(tmp_path):
    """A classifier's per-sequence logits (the training task draws one label per sequence; IA3's tiny drop
    there in bf16 is judged against the paper formula trained in bf16) and an encoder-decoder (the ids are
    its decoder input too; T5's q/k/v/o and wi/wo read as roles)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, T5Config, T5Model
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=96,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)).save_pretrained(tmp_path / "cls")
    T5Model(T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=96, num_layers=1, num_decoder_layers=1, num_heads=4,
                     dropout_rate=0.0, decoder_start_token_id=0)).save_pretrained(tmp_path / "t5")
    assert local_models.check_local(str(tmp_path / "cls")).output == local_models.LOGITS
    assert local_models.check_local(str(tmp_path / "t5")).output == local_models.HIDDEN_STATES
    doc = run_audit(tmp_path, "--model-path", str(tmp_path / "cls"), "--model-path", str(tmp_path / "t5"),
                    "--variants", "ia3,lora", "--models", "", "--configs", "main", "--quiet",
                    "--checks", "identity_at_init,paper_parity,peft_parity,placement,training")
    assert {v: d["verdict"] for v, d in doc["verdicts"].items()} == {"ia3": "conformant", "lora": "conformant"}
    trained = {(r["model"], r["dtype"]) for r in doc["rows"] if r["check"] == "training" and r["status"] == "pass"
               and r["metric"] == "loss_drop_diff_vs_reference"}
    assert trained == {(m, d) for m in ("path:cls", "path:t5") for d in ("float32", "bfloat16")}
