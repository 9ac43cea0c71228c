"""REGISTRY: variant name -> class, discovered from the modules of this package (one file each).

Discovery imports every public module here, so a variant module imports what it needs from ``_base``,
``_state`` and the like, never ``_runtime`` (which imports this registry for ``attach``).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ._base import Variant


def _discover() -> dict[str, type[Variant]]:
    found: dict[str, type[Variant]] = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__package__}.{info.name}")
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, Variant) and obj.__module__ == mod.__name__
                    and obj.name):
                if obj.name in found:
                    raise RuntimeError(f"variant name {obj.name!r} defined twice")
                found[obj.name] = obj
    return found


REGISTRY: dict[str, type[Variant]] = _discover()
