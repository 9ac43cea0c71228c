"""save_load: the subject's own save, loaded by its own load into a fresh base model: identical outputs.

Also, where the checkpoint is safetensors: a checkpoint with a missing or an extra tensor must be
refused on load (the adapter's tensor file: the path ``save`` returns, else the largest one) (a silently half-loaded adapter is the bug this catches), measured in the plan's
first dtype (which keys a loader accepts does not depend on it). n/a for a subject without save/load.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..cell import Cell, NotApplicable
from ..subjects import Adapted, LayoutError


def _raises(fn, tmpdir: str) -> tuple[float, str]:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any refusal counts; the temp folder is masked so rows are reproducible
        return 1.0, f"raised {type(e).__name__}: {str(e).replace(tmpdir, '<tmp>')[:120]}"
    return 0.0, "loaded without an error"


def _tensor_file(path: Path, named=None) -> Path | None:
    """The adapter's safetensors file of a saved checkpoint: the one ``save`` returned, else the path itself,
    else the largest inside it (a library that saves more than the adapter should return its file)."""
    if named is not None and Path(named).is_file() and _is_safetensors(Path(named)):
        return Path(named)
    if path.is_file():
        return path if _is_safetensors(path) else None
    files = sorted(path.rglob("*.safetensors"), key=lambda p: p.stat().st_size, reverse=True)
    return files[0] if files else None


def _is_safetensors(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt"):
            return True
    except Exception:  # noqa: BLE001
        return False


def _variant_copy(saved: Path, tensor_file: Path, dest: Path, edit) -> Path:
    """A copy of the checkpoint at ``dest`` whose tensor file is rewritten by ``edit(tensors)``."""
    if saved.is_dir():
        shutil.copytree(saved, dest)
        target = dest / tensor_file.relative_to(saved)
    else:
        target = dest
    with safe_open(str(tensor_file), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(edit(tensors), str(target), metadata=meta)
    return dest


def _own_tensors(adapted: Adapted) -> dict[str, dict[str, torch.Tensor]]:
    """{adapted layer: {name: tensor}} of every floating parameter and buffer under each adapted layer, as the
    subject names them (for a subject whose canonical state cannot be read)."""
    mods = dict(adapted.model.named_modules())
    return {n: {k: v for k, v in mods[n].state_dict().items() if v.is_floating_point()}
            for n in adapted.names if n in mods}


def run(cell: Cell) -> None:
    subject = cell.subject
    if not (subject.can("save") and subject.can("load")):
        raise NotApplicable(f"{subject.describe()} has no save/load")
    with cell.shared(perturbed=True) as adapted:
        _run(cell, adapted)


def _run(cell: Cell, adapted) -> None:
    subject = cell.subject
    method, cfg = cell.card.name, adapted.cfg

    def load(path: Path) -> Adapted:
        return Adapted(subject, subject.load(cell.fresh_model(), str(path), method, cfg), method, cfg)

    with torch.no_grad():
        y1 = cell.logits(adapted)
    with tempfile.TemporaryDirectory() as d:
        saved = Path(d) / "adapter"
        written = subject.save(adapted.model, str(saved))  # a driver may name the adapter's tensor file
        loaded = load(saved)
        with torch.no_grad():
            y2 = cell.logits(loaded)
        cell.row("logits_max_abs_diff", float((y2.double() - y1.double()).abs().max()), 0.0, op="==",
                 message=f"{subject.describe()}: save -> fresh base model -> load: outputs must be identical")
        try:
            ours, theirs = adapted.state(with_weight=True), loaded.state(with_weight=True)
            what = "canonical tensors (and base weights) of the adapted layers"
        except LayoutError as e:  # no canonical reading: the subject's own tensors, by their names
            cell.layout_seen(e)
            ours, theirs = _own_tensors(adapted), _own_tensors(loaded)
            what = "the subject's own parameters and buffers, by name (its canonical state cannot be read)"
        keys = lambda st: {f"{n}.{k}" for n, ts in st.items() for k in ts}  # noqa: E731
        cell.row("adapter_tensor_keys_mismatch", len(keys(ours) ^ keys(theirs)), 0.0, op="==",
                 message=f"{what}, saved vs loaded")
        diff = max((float((v.double() - theirs[n][k].double()).abs().max())
                    for n, ts in ours.items() for k, v in ts.items() if k in theirs.get(n, {})), default=0.0)
        cell.row("adapter_tensors_max_abs_diff", diff, 0.0, op="==",
                 message=f"{what} (W_res where the method mutates the base weight)")

        if cell.first_dtype not in (None, cell.dtype_name):  # which keys a loader accepts is not a dtype matter
            for metric in ("missing_key_raises", "extra_key_raises"):
                cell.row(metric, None, None, status="n/a", message=f"does not depend on the dtype: measured in "
                                                                   f"{cell.first_dtype}")
            return
        tensor_file = _tensor_file(saved, written)
        if tensor_file is None:
            for metric in ("missing_key_raises", "extra_key_raises"):
                cell.row(metric, None, None, status="n/a", message="the checkpoint has no safetensors file to edit")
            return
        with safe_open(str(tensor_file), framework="pt") as f:
            dropped = sorted(f.keys())[0]
        missing = _variant_copy(saved, tensor_file, Path(d) / "missing", lambda t: {k: v for k, v in t.items() if k != dropped})
        extra = _variant_copy(saved, tensor_file, Path(d) / "extra",
                              lambda t: {**t, f"unexpected_module.{dropped}": torch.zeros(1)})
        v, msg = _raises(lambda: load(missing), d)
        cell.row("missing_key_raises", v, 1.0, op="==", message=f"dropped {dropped}: {msg}")
        v, msg = _raises(lambda: load(extra), d)
        cell.row("extra_key_raises", v, 1.0, op="==", message=f"added unexpected_module.{dropped}: {msg}")
