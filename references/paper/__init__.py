"""Paper formulas in float64, one module per variant.

Every module exposes ``merged(W, b, state, cfg) -> (W_eff, b_eff)``, ``forward(x, W, b, state, cfg)``,
``layout(d_in, d_out, cfg) -> {name: shape}`` (the state it reads; None in a shape: any size),
``EQUATION`` and ``CITATION``; state keys and shapes follow ``references/STATE_LAYOUT.md``. A module
whose method allows several layouts for one layer (LoKr: any factorisation of the dimensions) also
exposes ``layout_given(d_in, d_out, cfg, given) -> {name: shape} | None``: the layout it reads for a
subject holding tensors of the canonical shapes ``given``, None when they are not one of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from ._common import compute_dtype, evaluated_in  # noqa: F401 - the audit measures rounding spread with it

# one module per variant, discovered: adding a method adds its file and nothing else
VARIANTS: tuple[str, ...] = tuple(sorted(i.name for i in pkgutil.iter_modules(__path__) if not i.name.startswith("_")))


def get(name: str) -> ModuleType:
    """Return the paper-formula module for variant ``name`` (one of ``VARIANTS``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
    return importlib.import_module(f"{__name__}.{name}")
