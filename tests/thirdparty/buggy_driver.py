"""The example driver (examples/hooklib_driver.py), unchanged, pointed at hooklib_buggy: hooklib with one planted
load bug (see hooklib_buggy/__init__.py). Audit it with

    python -m audit run --subject tests/thirdparty/buggy_driver.py:BuggyHooklibDriver --variants lora,ia3 --out out/buggy

``hooklib_buggy`` is a sibling module, importable because ``--subject FILE.py:Class`` puts this file's folder
on sys.path while the file loads (the example driver's own ``import hooklib`` is found the same way)."""
import importlib.util
import sys
from pathlib import Path

import hooklib_buggy


def _example_driver():
    """examples/hooklib_driver.py as a module (examples/ is not a package)."""
    if "hooklib_driver" not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "examples" / "hooklib_driver.py"
        spec = importlib.util.spec_from_file_location("hooklib_driver", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["hooklib_driver"] = module
    return sys.modules["hooklib_driver"]


class BuggyHooklibDriver(_example_driver().HooklibDriver):
    label, lib = "hooklib_buggy (hooklib with a planted load bug)", hooklib_buggy
