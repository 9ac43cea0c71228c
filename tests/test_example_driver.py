"""The worked example of a third-party subject: hooklib (tests/thirdparty/hooklib), an outside LoRA/IA3 hook
library with its own names, layout, config and checkpoints, audited through its driver (examples/hooklib_driver.py,
at most 40 lines). The correct library comes out conformant on every check; a copy with one planted load bug
(tests/thirdparty/hooklib_buggy) is caught by save_load. Both spec forms are exercised end to end: MODULE:Class
(looked up from the current folder) and FILE.py:Class (whose folder makes the sibling library importable)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIRDPARTY = ROOT / "tests" / "thirdparty"
EXAMPLES = ROOT / "examples"
DRIVER = EXAMPLES / "hooklib_driver.py"
LABEL = "hooklib (example third-party hook library)"  # HooklibDriver.label
BAD = {"fail", "error", "xpass"}
JUDGED = ("identity_at_init", "grad_flow", "paper_parity", "peft_parity", "placement", "save_load", "training",
          "robustness")  # every check that judges a subject row of lora / ia3 (properties: the cards state none)


def _env(*paths: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT, *paths))}


def _audit(out: Path, subject: str, *args: str, cwd: Path = ROOT, paths: tuple[Path, ...] = (),
           variants: str = "lora,ia3", models: str = "mlp,qwen3"):
    """``python -m audit run --subject SUBJECT`` in a subprocess: (completed process, results.json)."""
    proc = subprocess.run([sys.executable, "-m", "audit", "run", "--subject", subject, "--out", str(out), "--quiet",
                           "--variants", variants, "--models", models, *args],
                          cwd=cwd, env=_env(*paths), capture_output=True, text=True, timeout=600)
    results = out / "results.json"
    assert results.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(results.read_text())


def _subject_rows(results: dict) -> list[dict]:
    return [r for r in results["rows"] if r.get("about", "subject") == "subject"]


@pytest.mark.slow
def test_the_example_library_is_conformant_through_its_driver(tmp_path):
    """Every check, lora and ia3, mlp and qwen3, float32 and bfloat16: conformant, each judged check ran; the
    driver is named MODULE:Class from the current folder (examples/), the library comes from PYTHONPATH."""
    proc, res = _audit(tmp_path / "out", "hooklib_driver:HooklibDriver", "--dtypes", "float32,bfloat16",
                       "--checks", "all", cwd=EXAMPLES, paths=(THIRDPARTY,))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {v: d["verdict"] for v, d in res["verdicts"].items()} == {"lora": "conformant", "ia3": "conformant"}
    rows = _subject_rows(res)
    assert not [r for r in rows if r["status"] in BAD]
    for variant in ("lora", "ia3"):
        for dtype in ("float32", "bfloat16"):
            passed = {r["check"] for r in rows
                      if r["variant"] == variant and r["dtype"] == dtype and r["status"] == "pass"}
            # placement and robustness cannot depend on the dtype: judged in the first one (float32) only
            judged = set(JUDGED) - ({"placement", "robustness"} if dtype == "bfloat16" else set())
            assert judged <= passed, (variant, dtype, sorted(judged - passed))
    # hooklib's own load refused the edited checkpoints, its own config refused the bad inputs
    by = {(r["variant"], r["model"], r["dtype"], r["check"], r["metric"]): r for r in rows}
    for variant in ("lora", "ia3"):
        assert "hooklib.load" in by[(variant, "qwen3", "float32", "save_load", "missing_key_raises")]["message"]
    assert "HookConfig.rank" in by[("lora", "qwen3", "float32", "robustness", "raises[r=0]")]["message"]
    assert ("ia3", "qwen3", "float32", "robustness", "raises[r=0]") not in by  # IA3 has no rank to refuse
    # the subject is named: results.json's meta (set by the CLI from the driver's label) and the variant reports
    assert res["meta"]["subject"]["label"] == LABEL and res["meta"]["subject"]["kind"] == "third-party"
    assert res["meta"]["subject"]["references"] == {"lora": ["paper", "peft"], "ia3": ["paper", "peft"]}
    for variant in ("lora", "ia3"):
        assert "`hooklib_driver:HooklibDriver`" in (tmp_path / "out" / f"{variant}.md").read_text()


def test_a_planted_load_bug_is_caught_by_save_load(tmp_path):
    """hooklib_buggy restores tensors by leaf name (every layer gets the last layer's): non-conformant, and the
    only failing rows are save_load's output and tensor comparisons (its key check still refuses edited files,
    its targeting is hooklib's). The driver is FILE.py:Class, its library a sibling module: PYTHONPATH has
    neither tests/thirdparty nor examples."""
    proc, res = _audit(tmp_path / "out", str(THIRDPARTY / "buggy_driver.py") + ":BuggyHooklibDriver",
                       "--dtypes", "float32", "--checks", "placement,save_load,robustness", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert {v: d["verdict"] for v, d in res["verdicts"].items()} == {"lora": "non-conformant", "ia3": "non-conformant"}
    failing = {(r["variant"], r["model"], r["check"], r["metric"]) for r in _subject_rows(res) if r["status"] in BAD}
    # only where two adapted layers share a leaf name: the zoo decoders have one layer (each leaf name
    # once), the toy MLP two blocks, which is why the zoo keeps a multi-block model
    assert failing == {(v, "mlp", "save_load", metric) for v in ("lora", "ia3")
                       for metric in ("logits_max_abs_diff", "adapter_tensors_max_abs_diff")}
    assert min(r["value"] for r in res["rows"] if r["metric"] == "logits_max_abs_diff" and r["model"] == "mlp") > 1e-3
    passed = {(r["variant"], r["check"], r["metric"]) for r in _subject_rows(res) if r["status"] == "pass"}
    assert {("lora", "placement", "unexpected_targets"), ("ia3", "placement", "unexpected_targets"),
            ("lora", "save_load", "missing_key_raises"), ("lora", "save_load", "extra_key_raises")} <= passed
    assert res["meta"]["subject"]["label"] == "hooklib_buggy (hooklib with a planted load bug)"


def test_the_buggy_copy_differs_from_the_library_only_in_its_load():
    """So the finding above is the planted bug's: every other file of the copy is hooklib's, byte for byte."""
    good, bad = THIRDPARTY / "hooklib", THIRDPARTY / "hooklib_buggy"
    names = sorted(p.name for p in good.glob("*.py"))
    assert names == sorted(p.name for p in bad.glob("*.py"))
    differ = [n for n in names if (good / n).read_bytes() != (bad / n).read_bytes()]
    assert differ == ["__init__.py", "checkpoint.py"]
    good_init = (good / "__init__.py").read_text()
    assert good_init.split("\n", 1)[1] in (bad / "__init__.py").read_text()  # only the docstring's head differs
    assert "PLANTED BUG" in (bad / "checkpoint.py").read_text()
    assert "PLANTED BUG" not in (good / "checkpoint.py").read_text()


def test_the_driver_file_without_the_library_on_the_path():
    """FILE.py:Class from anywhere, the library on no path: the driver finds the copy in this checkout."""
    code = ("from audit.subjects import from_spec; import audit.subjects.base as b; "
            f"s = from_spec({str(DRIVER) + ':HooklibDriver'!r}); "
            "print(s.lib.__file__); print(s.label); print(isinstance(s, b.Subject), s.kind, sorted(s.tensor_names))")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lib_file, label, info = proc.stdout.strip().splitlines()[-3:]
    assert Path(lib_file) == THIRDPARTY / "hooklib" / "__init__.py"
    assert label == LABEL
    assert info == "True third-party ['ia3', 'lora']"


@pytest.mark.parametrize("driver", [DRIVER, EXAMPLES / "patchlib_driver.py"], ids=lambda p: p.stem)
def test_the_example_drivers_are_under_40_lines(driver):
    lines = driver.read_text().splitlines()
    assert 0 < len(lines) < 40, len(lines)


@pytest.mark.slow
def test_a_library_patching_forward_with_its_parameters_outside_the_model(tmp_path):
    """patchlib replaces each layer's forward and keeps A, B in an object the model does not hold: its driver
    declares where they are ("@A": external(model, name)) and which ones train (external_parameters), takes
    the resolved targets (GPT-2's fused c_attn included), and the audit captures its layers' outputs, trains
    and restores its state like any other: conformant on every model, no error row."""
    proc, res = _audit(tmp_path / "out", f"{EXAMPLES / 'patchlib_driver.py'}:PatchlibDriver", "--configs", "main",
                       variants="lora", models="qwen3,gpt2,phi3,mlp", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _subject_rows(res)
    assert res["verdicts"]["lora"]["verdict"] == "conformant" and not [r for r in rows if r["status"] in BAD]
    judged = {(r["check"], r["model"]) for r in rows if r["status"] == "pass"}
    for check in ("identity_at_init", "init", "paper_parity", "peft_parity", "grad_flow", "training", "save_load",
                  "placement", "robustness"):
        assert {(check, m) for m in ("qwen3", "gpt2", "phi3", "mlp")} <= judged, check
    trained = [r for r in rows if r["metric"] == "trainable_params"]
    assert trained and all(r["status"] == "pass" and r["value"] > 0 for r in trained)


def test_hooklib_detach_gives_back_the_base_model(monkeypatch):
    """Not audited by any check, so tested here: detach removes hooks and tensors; the model can be adapted again."""
    monkeypatch.syspath_prepend(str(THIRDPARTY))
    import torch

    import hooklib
    from audit import models
    model = models.build("mlp", seed=0)
    ids = models.example_inputs(model, seed=0)
    before = models.logits(model, ids)
    hooklib.attach(model, hooklib.HookConfig(method="lora", rank=2, alpha=4.0, targets=("up_proj",)))
    assert sorted(hooklib.adapted_modules(model)) == ["layers.0.up_proj", "layers.1.up_proj"]
    with torch.no_grad():
        for layer in hooklib.adapted_modules(model).values():
            layer.lora_up.normal_()
    assert not torch.equal(models.logits(model, ids), before)
    hooklib.detach(model)
    assert hooklib.adapted_modules(model) == {} and not any("lora" in n for n, _ in model.named_parameters())
    assert torch.equal(models.logits(model, ids), before)
    with pytest.raises(ValueError, match="k_proj"):  # ia3's default k/v: none in the toy MLP
        hooklib.attach(model, hooklib.HookConfig(method="ia3"))
    hooklib.attach(model, hooklib.HookConfig(method="ia3", targets=("down_proj",)))  # detached: may attach again
    assert sorted(hooklib.adapted_modules(model)) == ["layers.0.down_proj", "layers.1.down_proj"]


LENIENT = '''
"""hooklib through a driver whose load is lenient, as a library that loads with strict=False: a missing
tensor keeps its fresh init, an extra one is ignored. The equation is hooklib's own (right)."""
import json

import torch
from safetensors import safe_open

from hooklib.checkpoint import META_KEY, adapter_parameters
from hooklib_driver import HooklibDriver


class LenientLoad(HooklibDriver):
    label = "hooklib with a lenient loader"

    def load(self, base, path, method, cfg):
        with safe_open(path, framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        model = self.lib.attach(base, self.lib.HookConfig(**json.loads(meta[META_KEY])))
        with torch.no_grad():
            for key, p in adapter_parameters(model).items():
                if key in tensors:
                    p.copy_(tensors[key])
        return model
'''


def test_a_right_equation_with_a_lenient_loader_is_non_conformant_on_the_checkpoint_only(tmp_path):
    """Verdicts by concern: the equation (and everything but the loader) conformant, the checkpoint concern
    non-conformant, the overall verdict naming it, and one line saying all of it; --require equation
    judges the equation alone (exit 0)."""
    (tmp_path / "lenient_driver.py").write_text(LENIENT)
    spec = f"{tmp_path / 'lenient_driver.py'}:LenientLoad"
    args = ("--dtypes", "float32", "--configs", "main")
    proc, res = _audit(tmp_path / "out", spec, *args, paths=(EXAMPLES, THIRDPARTY))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for variant in ("lora", "ia3"):
        v = res["verdicts"][variant]
        concerns = {c: x["verdict"] for c, x in v["concerns"].items()}
        assert v["verdict"] == "non-conformant" and v["deciding_concerns"] == ["checkpoint"], v["headline"]
        assert concerns["equation"] == "conformant" and concerns["checkpoint"] == "non-conformant"
        assert {c for c, x in concerns.items() if x not in ("conformant", "not audited")} == {"checkpoint"}
        assert concerns["merge"] == "not audited"  # hooklib has no merge
        line = f"**{variant}** non-conformant: equation conformant"
        summary = (tmp_path / "out" / "SUMMARY.md").read_text()
        assert any(s.startswith(f"- {line}") and "checkpoint non-conformant (save_load)" in s
                   for s in summary.splitlines()), summary
    failing = {(r["check"], r["metric"]) for r in _subject_rows(res) if r["status"] in BAD}
    assert failing == {("save_load", "missing_key_raises"), ("save_load", "extra_key_raises")}
    proc, res = _audit(tmp_path / "eq", spec, *args, "--require", "equation", paths=(EXAMPLES, THIRDPARTY))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {v["verdict"] for v in res["verdicts"].values()} == {"conformant"}
    assert res["meta"]["required"] == ["equation"]
