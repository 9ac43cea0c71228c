"""REGISTRY: variant name -> class, discovered from the modules of this package (one file each)."""
from __future__ import annotations

import importlib
import pkgutil

from ._base import Variant


def _discover() -> dict[str, type[Variant]]:
    import variants

    found: dict[str, type[Variant]] = {}
    for info in sorted(pkgutil.iter_modules(variants.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"variants.{info.name}")
        for obj in vars(mod).values():
            if (isinstance(obj, type) and issubclass(obj, Variant) and obj.__module__ == mod.__name__
                    and obj.name):
                if obj.name in found:
                    raise RuntimeError(f"variant name {obj.name!r} defined twice")
                found[obj.name] = obj
    return found


REGISTRY: dict[str, type[Variant]] = _discover()
