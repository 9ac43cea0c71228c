"""The README's quick start runs as written (it once used an undefined ``fresh_model``)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(after: str) -> str:
    text = README.read_text()
    m = re.search(re.escape(after) + r"\s*```python\n(.*?)```", text, re.S)
    assert m, f"no python block after {after!r} in README.md"
    return m.group(1)


def test_library_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it writes dora.safetensors to the working directory
    code = _block("## Quick start: the library")
    exec(compile(code, "README.md quick start", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "dora.safetensors").is_file()
    assert (tmp_path / "dora-peft" / "adapter_config.json").is_file()
    assert "dora on 4 layers, rank 8: trainable params" in capsys.readouterr().out
