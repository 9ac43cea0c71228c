"""save / load: adapter tensors in safetensors, the config in its metadata; never unpickles."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ._base import Variant
from ._config import AdapterConfig
from ._runtime import STATE_ATTR, adapter_tensors, attach, state_of

FORMAT = "adapter-audit/1"


def _safe(path):
    """safe_open, with unreadable files (a pickle, a .pt, garbage) reported as ValueError."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"adapter checkpoint not found: {path}")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises its own SafetensorError (not a ValueError)
        raise ValueError(f"{path}: not a safetensors file ({e}); adapter checkpoints are never unpickled") from None


def _open(path, read):
    with _safe(path) as f:
        return read(f)


def _checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    st = state_of(model)
    out: dict[str, torch.Tensor] = {}
    for name, mod in st.targets.items():
        for t, v in adapter_tensors(mod).items():
            out[f"{name}.adapter_{t}"] = v
        if st.variant.mutates_base_weight:  # the residual weight is part of the adapter
            out[f"{name}.weight"] = mod.weight
    return out


def _umask() -> int:
    """The process umask (set and restored at once: os has no read-only accessor)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _shared_keys(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """{key: the first key holding the same tensor object} for tensors several layers share (VeRA's
    frozen pair): a checkpoint stores each once, as peft does."""
    first: dict[int, str] = {}
    out = {}
    for k, v in tensors.items():
        holder = first.setdefault(id(v), k)
        if holder != k:
            out[k] = holder
    return out


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the attached adapter (and any base weight it mutated) to ``path`` atomically; a tensor
    shared by several layers is stored once (metadata ``shared``: {key: the key holding it})."""
    st = state_of(model)
    if st.merged or (st.disabled and st.original_weights):
        what = "merged into the weights" if st.merged else "disabled (the layers hold the base weights, not W_res)"
        undo = "variants.unmerge(model)" if st.merged else "variants.enable(model)"
        raise RuntimeError(f"the adapter is {what}: call {undo} before saving it (a checkpoint holds the adapter "
                           "tensors and the base weights the adapter rewrote)")
    live = _checkpoint_tensors(model)
    shared = _shared_keys(live)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in live.items() if k not in shared}
    meta = {
        "format": FORMAT,
        "variant": st.variant.name,
        "config": st.cfg.to_json(),
        "ranks": json.dumps({**dict.fromkeys(st.dropped, 0), **{n: m.adapter_rank for n, m in st.targets.items()}},
                            sort_keys=True),
        "shared": json.dumps(shared, sort_keys=True),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # never over another file
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o666 & ~_umask())  # the usual permissions, as open() would give (safetensors writes 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_config(path: str | os.PathLike, variant: type[Variant] | None = None) -> tuple[type[Variant], AdapterConfig, dict[str, int]]:
    """Variant class, config and per-layer ranks stored in a checkpoint's metadata."""
    meta = _open(path, lambda f: f.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an adapter-audit checkpoint (metadata format={meta.get('format')!r})")
    name = meta["variant"]
    if variant is None:
        from ._registry import REGISTRY
        if name not in REGISTRY:
            raise ValueError(f"{path}: checkpoint variant {name!r} is not registered; known: {sorted(REGISTRY)}")
        variant = REGISTRY[name]
    elif variant.name != name:
        raise ValueError(f"{path}: checkpoint holds variant {name!r}, not {variant.name!r}")
    fields = json.loads(meta["config"])["fields"]
    cfg = variant.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    return variant, cfg, json.loads(meta.get("ranks", "{}"))


def load(model: nn.Module, path: str | os.PathLike, *, variant: type[Variant] | None = None) -> nn.Module:
    """Load a checkpoint written by ``save`` into ``model``.

    A bare model gets the adapter attached (no init, no calibration needed) then filled; a model
    that already carries the same variant is filled in place. Keys, shapes and the variant must
    match exactly, else KeyError / ValueError naming them.
    """
    variant, cfg, ranks = read_config(path, variant)
    st = getattr(model, STATE_ATTR, None)
    if st is None:
        attach(model, cfg, variant=variant, _init=False, _ranks=ranks)
    elif st.variant.name != variant.name:
        raise ValueError(f"model carries variant {st.variant.name!r}, checkpoint holds {variant.name!r}")
    expected = _checkpoint_tensors(model)
    with _safe(path) as f:
        shared = json.loads((f.metadata() or {}).get("shared", "{}"))
        keys = set(f.keys())
        bad_alias = sorted(k for k, v in shared.items() if k not in expected or v not in keys or k in keys)
        if bad_alias:
            raise ValueError(f"{path}: metadata 'shared' names keys the checkpoint cannot share: {bad_alias[:6]}")
        missing, extra = sorted(set(expected) - keys - set(shared)), sorted(keys - set(expected))
        if missing or extra:
            if st is None:
                from ._runtime import detach
                detach(model)
            raise KeyError(f"{path}: checkpoint keys do not match the model: missing {missing[:6]}, "
                           f"unexpected {extra[:6]}")
        loaded = {k: f.get_tensor(k) for k in sorted(keys)}
    loaded.update({k: loaded[v] for k, v in shared.items()})
    bad = [f"{k}: file {tuple(t.shape)} vs model {tuple(expected[k].shape)}"
           for k, t in loaded.items() if t.shape != expected[k].shape]
    if bad:
        if st is None:
            from ._runtime import detach
            detach(model)
        raise ValueError(f"{path}: tensor shapes do not match the model: {bad[:6]}")
    with torch.no_grad():
        for k, t in loaded.items():
            if k not in shared:
                expected[k].copy_(t)
    for k, v in shared.items():  # one tensor again, as when saved
        owner, _, attr = k.rpartition(".")
        mod = model.get_submodule(owner)
        (mod._buffers if attr in mod._buffers else mod._parameters)[attr] = expected[v]
    return model
