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

from ._base import PREFIX, Variant
from ._config import AdapterConfig
from ._runtime import STATE_ATTR, adapter_tensors, attach, state_of

FORMAT = "adapter-audit/1"


def _safe(path):
    """safe_open, with unreadable files (a pickle, a .pt, garbage) reported as ValueError."""
    if Path(path).is_dir() and (Path(path) / "adapter_config.json").is_file():
        raise IsADirectoryError(f"{path} is a peft adapter folder: load it with variants.load_peft(model, folder)")
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
    check_saveable(st)
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
    if st.original_weights:  # a rewritten base weight (PiSSA's W_res) only fits the base it was made from
        meta["base_fingerprint"] = json.dumps({n: fingerprint(st.original_weight(n)) for n in st.targets},
                                              sort_keys=True)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def atomic_write(path: str | os.PathLike, write) -> Path:
    """``write(tmp)`` into a fresh temporary file beside ``path``, then rename it over ``path``: a reader
    never sees a half-written file, and a failed write leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # never over another file
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # the usual permissions, as open() would give (safetensors writes 0600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_saveable(st) -> None:
    """Refuse to save an adapter that is merged, or disabled with its base weights swapped in."""
    if st.merged or (st.disabled and st.original_weights):
        what = "merged into the weights" if st.merged else "disabled (the layers hold the base weights, not W_res)"
        undo = "variants.unmerge(model)" if st.merged else "variants.enable(model)"
        raise RuntimeError(f"the adapter is {what}: call {undo} before saving it (a checkpoint holds the adapter "
                           "tensors and the base weights the adapter rewrote)")


N_PROJECTIONS = 8
FINGERPRINT_TOL = 2.0 ** -5  # of ‖W‖_F: the same base in another dtype moves each number by ~u‖W‖ (bf16:
# 2^-8), another base by ~‖W‖ (a projection of unrelated weights is a draw of size ‖W‖_F)


def fingerprint(weight: torch.Tensor) -> list[float]:
    """[‖W‖_F, u_iᵀ W v_i for 8 seeded unit-variance random vector pairs] in float64, W canonical
    (d_out, d_in): cheap (matrix-vector products), unchanged by the dtype up to rounding, and an
    unrelated weight lands ~‖W‖_F away in every projection."""
    w = weight.detach().to("cpu", torch.float64)
    gen = torch.Generator().manual_seed(20240601)
    out = [float(w.norm())]
    for _ in range(N_PROJECTIONS):
        u = torch.randn(w.shape[0], generator=gen, dtype=torch.float64)
        v = torch.randn(w.shape[1], generator=gen, dtype=torch.float64)
        out.append(float(u @ (w @ v)))  # ~N(0, ‖W‖_F²) over the draws: of size ‖W‖_F
    return out


def _check_base(path, st, stored: dict[str, list[float]]) -> None:
    """Refuse a rewritten-weight checkpoint made on another base model (its W_res would replace this
    model's weights: a model that is neither the base nor the adapted one)."""
    for name, fp in stored.items():
        if name not in st.targets:
            continue
        mine = fingerprint(st.original_weight(name))  # the base weight this model had before any W_res
        scale = max(abs(fp[0]), 1e-30)
        off = max(abs(a - b) for a, b in zip(mine, fp)) / scale
        if off > FINGERPRINT_TOL:
            raise ValueError(f"{path}: the checkpoint's rewritten base weights were made from another base model "
                             f"(layer {name!r}: its fingerprint differs by {off:.2g} of ‖W‖, more than "
                             f"{FINGERPRINT_TOL:g}); load it into the base model it was trained from")


def tensor_problems(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], cfg: AdapterConfig,
                    what: str) -> list[str]:
    """Problems of a checkpoint's tensors (keyed as the state dict, '<module>.adapter_<t>') against the
    model's: shapes (``what`` says what set them), non-finite values, an adapter dtype other than the config's."""
    bad = [f"{k}: file {tuple(t.shape)} vs model {tuple(expected[k].shape)}"
           for k, t in loaded.items() if t.shape != expected[k].shape]
    return ([f"tensor shapes do not match the model ({what}): {bad[:6]}"] if bad else []) + _check_tensors(loaded, cfg)


def _check_tensors(loaded: dict[str, torch.Tensor], cfg: AdapterConfig) -> list[str]:
    """Problems of the stored tensors themselves: non-finite values, an adapter dtype other than the config's."""
    problems = []
    bad = sorted(k for k, t in loaded.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        problems.append(f"non-finite values (NaN/Inf) in {bad[:6]}")
    if cfg.dtype is not None:
        want = getattr(torch, cfg.dtype)
        wrong = sorted(f"{k} ({str(t.dtype).removeprefix('torch.')})" for k, t in loaded.items()
                       if f".{PREFIX}" in k and t.is_floating_point() and t.dtype != want)
        if wrong:
            problems.append(f"adapter tensors of another dtype than the config's {cfg.dtype}: {wrong[:6]}")
    return problems


def _checked_tensors(path, model: nn.Module, cfg: AdapterConfig):
    """(the model's checkpoint tensors, the file's, its shared keys) once every check passed: keys,
    shapes, finite values, dtypes, and for a rewritten base weight the base it was made from."""
    expected = _checkpoint_tensors(model)
    with _safe(path) as f:
        meta = f.metadata() or {}
        shared = json.loads(meta.get("shared", "{}"))
        keys = set(f.keys())
        bad_alias = sorted(k for k, v in shared.items() if k not in expected or v not in keys or k in keys)
        if bad_alias:
            raise ValueError(f"{path}: metadata 'shared' names keys the checkpoint cannot share: {bad_alias[:6]}")
        missing, extra = sorted(set(expected) - keys - set(shared)), sorted(keys - set(expected))
        if missing or extra:
            raise KeyError(f"{path}: checkpoint keys do not match the model: missing {missing[:6]}, "
                           f"unexpected {extra[:6]}")
        loaded = {k: f.get_tensor(k) for k in sorted(keys)}
    loaded.update({k: loaded[v] for k, v in shared.items()})
    problems = tensor_problems(loaded, expected, cfg, "the metadata's r or config")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    fp = json.loads(meta.get("base_fingerprint", "{}"))
    if fp:
        _check_base(path, state_of(model), fp)
    return expected, loaded, shared


def read_config(path: str | os.PathLike, variant: type[Variant] | None = None) -> tuple[type[Variant], AdapterConfig, dict[str, int]]:
    """Variant class, config and per-layer ranks stored in a checkpoint's metadata."""
    meta = _open(path, lambda f: f.metadata() or {})
    if meta.get("format") != FORMAT:
        peft = (Path(path).parent / "adapter_config.json").is_file()
        raise ValueError(f"{path}: not an adapter-audit checkpoint (metadata format={meta.get('format')!r})"
                         + ("; it sits in a peft adapter folder: load the folder with variants.load_peft(model, folder)"
                            if peft else ""))
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
    if not variant.per_layer_rank:  # only a data-driven allocation (EVA) gives layers other ranks than r
        off = sorted(f"{n}: {r}" for n, r in ranks.items() if r != cfg.r)
        if off:
            raise ValueError(f"{path}: metadata disagrees with itself: config r={cfg.r}, per-layer ranks {off[:6]}")
    st = getattr(model, STATE_ATTR, None)
    if st is None:
        attach(model, cfg, variant=variant, _init=False, _ranks=ranks)
    elif st.variant.name != variant.name:
        raise ValueError(f"model carries variant {st.variant.name!r}, checkpoint holds {variant.name!r}")
    try:  # every refusal below leaves a model that came in bare bare again
        expected, loaded, shared = _checked_tensors(path, model, cfg)
    except (KeyError, ValueError):
        if st is None:
            from ._runtime import detach
            detach(model)
        raise
    with torch.no_grad():
        for k, t in loaded.items():
            if k not in shared:
                expected[k].copy_(t)
    for k, v in shared.items():  # one tensor again, as when saved
        owner, _, attr = k.rpartition(".")
        mod = model.get_submodule(owner)
        (mod._buffers if attr in mod._buffers else mod._parameters)[attr] = expected[v]
    return model
