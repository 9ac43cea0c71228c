"""results.json: provenance, rows and verdicts; written atomically."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
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


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc), else by
    setting and restoring it (a brief window other threads could see)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the new one, never half of it. The file gets the usual permissions
    (0o666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write(out: Path, meta: dict, rows: list[Row], verdicts: dict) -> Path:
    doc = {"meta": meta, "rows": [r.to_dict() for r in rows], "verdicts": verdicts}
    path = out / "results.json"
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


ROW_KEYS = ("variant", "check", "model", "dtype", "metric", "status")


def read(path: Path) -> dict:
    """A results.json (or a baseline made from one), checked to be ours: FileNotFoundError when the
    file is missing, ValueError naming what is wrong when it is not an adapter-audit document."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a results file (did you mean {path / 'results.json'}?)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"results file not found: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; is this an adapter-audit results.json?") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a JSON {type(doc).__name__}, not an adapter-audit results.json")
    for key in ("meta", "rows", "verdicts"):
        if key not in doc:
            raise ValueError(f"{path}: missing top-level key {key!r}; is this an adapter-audit results.json?")
    if not isinstance(doc["rows"], list) or not isinstance(doc["verdicts"], dict) or not isinstance(doc["meta"], dict):
        raise ValueError(f"{path}: 'meta' and 'verdicts' must be objects and 'rows' a list; "
                         "is this an adapter-audit results.json?")
    for i, row in enumerate(doc["rows"]):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {', '.join(missing)}; is this an adapter-audit results.json?")
    for name, v in doc["verdicts"].items():
        if not isinstance(v, dict) or "verdict" not in v:
            raise ValueError(f"{path}: verdict of {name!r} has no 'verdict'; is this an adapter-audit results.json?")
    return doc
