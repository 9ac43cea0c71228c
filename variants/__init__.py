"""adapter-audit's adapter library: LoRA-family variants as forward hooks on linear layers.

    import variants
    cfg = variants.config("lora", r=8, alpha=16, target_roles=("q", "v"))
    variants.attach(model, cfg)            # base frozen, adapter trainable
    opt = torch.optim.AdamW(variants.adapter_parameters(model), lr=1e-4)
    print(variants.summary(model))         # trainable params of all
    variants.save(model, "adapter.safetensors")
    with variants.disabled(model): ...     # the base model's outputs
    variants.merge(model); variants.unmerge(model)   # into the weights and back, exactly
    variants.detach(model)
    variants.load(fresh_model, "adapter.safetensors")
    variants.save_peft(model, "folder")    # peft's adapter folder: PeftModel.from_pretrained(base, "folder")
    variants.load_peft(fresh_model, "folder")        # and a folder peft saved, into ours
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ._affine import effective_affine
from ._base import PREFIX, ParamSpec, Variant
from ._config import DTYPES, ROLES, AdapterConfig
from ._io import load, read_config, save
from ._peft_io import load_peft, read_peft_config, save_peft
from ._registry import REGISTRY
from ._control import disable, disabled, enable, is_merged, merge, summary, unmerge
from ._runtime import adapter_parameters, adapter_tensors, attach, detach, named_adapter_parameters, state_of
from ._targets import role_of, roles_of, select_targets

__all__ = ["REGISTRY", "config", "attach", "detach", "save", "load", "read_config", "Variant", "ParamSpec",
           "AdapterConfig", "adapter_parameters", "named_adapter_parameters", "adapter_tensors", "state_of",
           "role_of", "roles_of", "select_targets", "PREFIX", "DTYPES", "ROLES", "merge", "unmerge", "is_merged",
           "disable", "enable", "disabled", "summary", "effective_affine", "save_peft", "load_peft",
           "read_peft_config"]


def config(name: str, **fields: Any) -> AdapterConfig:
    """The typed config of variant ``name``; unknown names and fields raise naming what is allowed."""
    if name not in REGISTRY:
        raise ValueError(f"unknown variant {name!r}; known variants: {sorted(REGISTRY)}")
    cls = REGISTRY[name].Config
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}; allowed fields: {allowed}")
    ignored = sorted(set(fields) & set(cls.unused))
    if ignored:
        raise TypeError(f"{cls.__name__}: {name} does not use {', '.join(ignored)}: leave "
                        f"{'it' if len(ignored) == 1 else 'them'} unset; the fields {name} uses: {cls.used_fields()}")
    return cls(**fields)
