"""peft adapter folders in and out: ``save_peft`` writes ours so that ``PeftModel.from_pretrained``
loads it; ``load_peft`` reads a folder peft saved into our runtime. The layout of each method is the
variant's ``peft_format`` (``_peft_format.PeftFormat``); peft itself is not needed for either.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ._base import PREFIX
from ._io import _safe, atomic_write, check_saveable, tensor_problems
from ._layers import is_conv1d
from ._peft_format import CONFIG_FILE, LAYER_PREFIX, WEIGHTS_FILE, PeftFormat, from_peft, to_peft
from ._runtime import STATE_ATTR, adapter_tensors, attach, detach, state_of


def save_peft(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write the attached adapter as a peft adapter folder (``adapter_config.json`` and
    ``adapter_model.safetensors``): ``PeftModel.from_pretrained(base_model, folder)`` gives the same
    outputs, and so does ``variants.load_peft``. A base-rewriting variant (PiSSA, OLoRA) is written as
    peft writes it: the adapter tensors and an init peft re-runs on the original base when it loads.
    Refused, naming why, where peft has no counterpart (AntiPaSTO, DeLoRA's paper init, ...)."""
    st = state_of(model)
    check_saveable(st)
    fmt: PeftFormat | None = type(st.variant).peft_format
    if fmt is None:
        raise ValueError(f"peft has no counterpart of variant {st.variant.name!r}: save it with "
                         "variants.save(model, path) (adapter-audit's format)")
    if fmt.unloadable:
        raise ValueError(f"{st.variant.name} cannot be written as a peft adapter folder: {fmt.unloadable}; save it "
                         "with variants.save(model, path) (adapter-audit's format, which holds W_res)")
    conv1d = sorted(n for n, m in st.targets.items() if is_conv1d(m))
    if conv1d and fmt.conv1d is not None:
        raise ValueError(f"{st.variant.name} on transformers Conv1D layers ({conv1d[:3]}) cannot be written for peft: "
                         f"{fmt.conv1d}")
    fields = fmt.to_config(st.cfg, st)
    tensors: dict[str, torch.Tensor] = {}
    for name, mod in st.targets.items():
        live = adapter_tensors(mod)
        fmt.require_mapped(st.variant.name, live)
        for t, v in live.items():
            key = fmt.key(name, t)
            if key not in tensors:  # a shared tensor once
                tensors[key] = to_peft(v.detach(), fmt.transform(st.cfg, t)).to("cpu").contiguous().clone()
    if fmt.pack is not None:
        tensors = fmt.pack(st.cfg, tensors)
    pcfg = {"peft_type": fmt.peft_type, "task_type": None, "inference_mode": True,
            "base_model_name_or_path": getattr(model, "name_or_path", None) or None,
            "target_modules": sorted(st.targets), **fields}
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: exists and is not a folder")
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(pcfg, indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return folder


def read_peft_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The peft config (a dict) of a peft adapter folder; clear errors for what is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"peft adapter folder not found: {folder}")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} (not a peft adapter folder)")
    try:
        pcfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(pcfg, dict) or "peft_type" not in pcfg:
        raise ValueError(f"{path}: no 'peft_type' field (not a peft adapter config)")
    return pcfg


def _claim(pcfg: dict, keys: list[str]):
    """(variant class, its PeftFormat, {module: {suffix key}}) of the one variant that is this config."""
    from ._registry import REGISTRY
    kind = pcfg["peft_type"]
    candidates = [v for v in REGISTRY.values() if v.peft_format is not None and v.peft_format.peft_type == kind]
    if not candidates:
        known = sorted({v.peft_format.peft_type for v in REGISTRY.values() if v.peft_format is not None})
        raise ValueError(f"peft_type {kind!r} has no adapter-audit counterpart; supported: {known}")
    suffixes = {s for v in candidates for t, s in v.peft_format.tensors.items() if t not in v.peft_format.shared}
    modules = sorted({k[len(LAYER_PREFIX):-len(s) - 1] for k in keys if k.startswith(LAYER_PREFIX)
                      for s in suffixes if k.endswith("." + s)})
    chosen = [v for v in candidates if v.peft_format.claims(pcfg, modules)]
    if len(chosen) != 1:
        reads = sorted({f for v in candidates for f in v.peft_format.reads} & set(pcfg))
        shown = ", ".join(f"{f}={pcfg[f]!r}" for f in reads)
        raise ValueError(f"no adapter-audit variant is this {kind} adapter ({shown or 'no distinguishing fields'}); "
                         f"the {kind} variants here: {[v.name for v in candidates]}"
                         + (f" (several claim it: {[v.name for v in chosen]})" if chosen else ""))
    return chosen[0], chosen[0].peft_format, modules


def _truthy(v: Any) -> bool:
    return v not in (None, False, "", [], {}) and not (isinstance(v, (int, float)) and v == 0)


def _check_fields(pcfg: dict, fmt: PeftFormat, name: str, path: Path) -> None:
    """Refuse a peft option whose effect we would silently drop; warn for training-only ones."""
    for k, allowed in fmt.fixed.items():
        if k in pcfg and pcfg[k] not in allowed:
            raise ValueError(f"{path}: {k}={pcfg[k]!r} cannot be loaded into {name!r} (only {list(allowed)})")
    unknown = sorted(k for k, v in pcfg.items() if k not in fmt.known_fields() and _truthy(v))
    if unknown:
        raise ValueError(f"{path}: {', '.join(f'{k}={pcfg[k]!r}' for k in unknown)}: variants.load_peft cannot "
                         f"reproduce {'this option' if len(unknown) == 1 else 'these options'} of peft's "
                         f"{fmt.peft_type} for {name!r} (merge the adapter in peft and load the merged model instead)")
    for k in fmt.training_only:
        if _truthy(pcfg.get(k)):
            warnings.warn(f"{path}: {k}={pcfg[k]!r} changes training only and {name!r} has no such option: "
                          "loaded without it (the outputs are the same)", stacklevel=3)


def load_peft(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Load a peft adapter folder into a bare ``model`` (the base model the adapter was trained on):
    the variant, config and adapted layers come from the folder; the outputs are peft's. Refused,
    naming the problem, before anything is attached: a pickled checkpoint, a method or option with no
    counterpart here, keys or shapes that do not fit the model, NaN/Inf tensors."""
    if getattr(model, STATE_ATTR, None) is not None:
        raise RuntimeError("an adapter is already attached to this model: load_peft needs the bare base model")
    folder = Path(folder)
    pcfg = read_peft_config(folder)
    wpath = folder / WEIGHTS_FILE
    if not wpath.is_file():
        pickled = [p.name for p in folder.glob("adapter_model.bin")]
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_FILE}" + (f" ({pickled[0]} is a pickle, which is never loaded: "
                                "re-save it with save_pretrained(safe_serialization=True))" if pickled else ""))
    unpack = _unpacker(pcfg)
    stored = None
    with _safe(wpath) as f:
        if unpack is None:
            slices = {k: f.get_slice(k) for k in f.keys()}
            shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
            dtypes = {k: s.get_dtype() for k, s in slices.items()}
        else:  # a method whose peft options may store another form of its tensors: read them whole, rebuilt
            stored = unpack(pcfg, {k: f.get_tensor(k) for k in f.keys()})
            shapes = {k: tuple(t.shape) for k, t in stored.items()}
            dtypes = {k: _SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)) for k, t in stored.items()}
    variant, fmt, modules = _claim(pcfg, sorted(shapes))
    if fmt.unloadable:
        raise ValueError(f"{folder}: a peft {variant.name} adapter cannot be loaded from the folder alone: "
                         f"{fmt.unloadable}")
    _check_fields(pcfg, fmt, variant.name, folder / CONFIG_FILE)
    if not modules:
        wanted = sorted(set(fmt.tensors.values()))
        raise ValueError(f"{wpath}: no adapter tensors in the layout this library reads for peft's {fmt.peft_type} "
                         f"(keys ending in {wanted}); the file holds {sorted(shapes)[:3]}: the layout of another peft "
                         f"release (this folder's peft_version: {pcfg.get('peft_version', 'not recorded')})")
    absent = [m for m in modules if _submodule(model, m) is None]
    if absent:
        raise KeyError(f"{folder}: the adapter adapts modules this model lacks: {absent[:6]} (load it into the "
                       "base model it was trained on)")
    by_module = {m: {t: shapes[k] for t in fmt.tensors if (k := fmt.key(m, t)) in shapes} for m in modules}
    fields = fmt.from_config(pcfg, by_module)
    kinds = sorted({d for d in dtypes.values() if d.startswith(("F", "BF"))})  # integer positions (SHiRA) aside
    if len(kinds) != 1:
        raise ValueError(f"{wpath}: adapter tensors of several dtypes {kinds}; adapter-audit keeps one adapter dtype")
    dtype = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}.get(kinds[0])
    if dtype is None:
        raise ValueError(f"{wpath}: adapter tensors of dtype {kinds[0]}; loadable: float32, bfloat16, float16, float64")
    cfg = variant.Config(**fields, dtype=dtype, target_names=tuple(f"^{re.escape(m)}$" for m in modules))
    ranks = {m: int(by_module[m][fmt.per_layer_rank][0]) for m in modules} if fmt.per_layer_rank else None
    attach(model, cfg, variant=variant, _init=fmt.reinit, _ranks=ranks)
    try:
        _fill(model, fmt, wpath, set(shapes), stored)
    except BaseException:
        detach(model)
        raise
    return model


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}


def _unpacker(pcfg: dict):
    """The ``unpack`` of the variant formats of this peft type (one at most declares it), or None."""
    from ._registry import REGISTRY
    found = [v.peft_format.unpack for v in REGISTRY.values() if v.peft_format is not None
             and v.peft_format.peft_type == pcfg.get("peft_type") and v.peft_format.unpack is not None]
    return found[0] if found else None


def _fill(model: nn.Module, fmt: PeftFormat, wpath: Path, keys: set[str], stored: dict | None = None) -> None:
    """Copy the file's tensors (``stored``: as already read and unpacked) into the attached adapter, after
    every check passed."""
    st = state_of(model)
    live = {(n, t): v for n, mod in st.targets.items() for t, v in adapter_tensors(mod).items()}
    fmt.require_mapped(st.variant.name, {t for _, t in live})
    own = {nt: f"{nt[0]}.{PREFIX}{nt[1]}" for nt in live}  # our state-dict names
    file_key = {nt: fmt.key(*nt) for nt in live}  # a shared tensor: one key for every layer
    missing, extra = sorted(set(file_key.values()) - keys), sorted(keys - set(file_key.values()))
    if missing or extra:
        raise KeyError(f"{wpath}: keys do not match the adapter {st.variant.name!r} builds on this model under the "
                       f"folder's config: missing {missing[:6]}, unexpected {extra[:6]}")
    if stored is None:
        with _safe(wpath) as f:
            stored = {k: f.get_tensor(k) for k in keys}  # each once, a shared one too
    loaded = {own[nt]: from_peft(stored[file_key[nt]], fmt.transform(st.cfg, nt[1]), v.shape) for nt, v in live.items()}
    problems = tensor_problems(loaded, {own[nt]: v for nt, v in live.items()}, st.cfg, "the folder's config")
    if problems:
        raise ValueError(f"{wpath}: " + "; ".join(problems))
    with torch.no_grad():
        for nt, v in live.items():
            v.copy_(loaded[own[nt]])
    for t in fmt.shared:  # one tensor again on every layer, as peft holds it (VB-LoRA's trainable bank)
        holder = None
        for n, mod in st.targets.items():
            slot = mod._parameters if PREFIX + t in mod._parameters else mod._buffers
            holder = slot[PREFIX + t] if holder is None else holder
            slot[PREFIX + t] = holder
