"""save_load: save a non-trivial adapter, load it into a fresh base model: identical outputs.

Also: a checkpoint with a missing or an extra key must raise on load.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import variants

from ..cell import Cell
from ..state import perturb


def _raises(fn, tmpdir: str) -> tuple[float, str]:
    try:
        fn()
    except (KeyError, ValueError) as e:  # the temp folder is masked so rows are reproducible
        return 1.0, f"raised {type(e).__name__}: {str(e).replace(tmpdir, '<tmp>')[:120]}"
    return 0.0, "did not raise"


def run(cell: Cell) -> None:
    model = cell.adapted()
    perturb(model, cell.seed, cell.card.perturb)
    with torch.no_grad():
        y1 = cell.logits(model)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "adapter.safetensors"
        variants.save(model, path)
        fresh = cell.fresh_model()
        variants.load(fresh, path, variant=cell.variant)
        with torch.no_grad():
            y2 = cell.logits(fresh)
        cell.row("logits_max_abs_diff", float((y2.double() - y1.double()).abs().max()), 0.0, op="==",
                 message="save -> fresh base model -> load: outputs must be identical")
        ours = variants.adapter_parameters(model)
        theirs = variants.adapter_parameters(fresh)
        diff = max((float((ours[k].detach().double() - theirs[k].detach().double()).abs().max()) for k in ours if k in theirs), default=0.0)
        cell.row("adapter_tensor_keys_mismatch", len(set(ours) ^ set(theirs)), 0.0, op="==")
        cell.row("adapter_tensors_max_abs_diff", diff, 0.0, op="==")

        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        dropped = sorted(tensors)[0]
        missing = Path(d) / "missing.safetensors"
        save_file({k: v for k, v in tensors.items() if k != dropped}, str(missing), metadata=meta)
        extra = Path(d) / "extra.safetensors"
        save_file({**tensors, "unexpected.adapter_X": torch.zeros(1)}, str(extra), metadata=meta)
        v, msg = _raises(lambda: variants.load(cell.fresh_model(), missing, variant=cell.variant), d)
        cell.row("missing_key_raises", v, 1.0, op="==", message=f"dropped {dropped}: {msg}")
        v, msg = _raises(lambda: variants.load(cell.fresh_model(), extra, variant=cell.variant), d)
        cell.row("extra_key_raises", v, 1.0, op="==", message=msg)
