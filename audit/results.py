"""results.json: provenance, rows and verdicts; written atomically."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .rows import Row


def provenance(seed: int, device: str, argv: list[str]) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "tool": "adapter-audit",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "python": platform.python_version()},
        "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
        "seed": seed, "device": device, "threads": torch.get_num_threads(),
        "platform": platform.platform(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "argv": argv,
    }


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write(out: Path, meta: dict, rows: list[Row], verdicts: dict) -> Path:
    doc = {"meta": meta, "rows": [r.to_dict() for r in rows], "verdicts": verdicts}
    path = out / "results.json"
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def read(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"results file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key in ("meta", "rows", "verdicts"):
        if key not in doc:
            raise ValueError(f"{path}: missing top-level key {key!r}; is this an adapter-audit results.json?")
    return doc
