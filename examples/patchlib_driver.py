"""Driver for patchlib (tests/thirdparty/patchlib): LoRA patched into forward, its parameters outside the model.
Run: python -m audit run --subject examples/patchlib_driver.py:PatchlibDriver --variants lora --out out/patchlib"""
import sys
from pathlib import Path

from audit.subjects import NotSupported, Subject

try:
    import patchlib
except ImportError:  # not on the path: use the copy in this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests" / "thirdparty"))
    import patchlib

SELECTION = ("target_names", "target_roles", "exclude_names", "layers", "r", "seed", "use_rslora", "dropout")


class PatchlibDriver(Subject):
    label, lib = "patchlib (LoRA patched into forward, parameters outside the model)", patchlib
    tensor_names = {"lora": {"A": "@A", "B": "@B"}}  # "@": under external(model, name), not under the layer

    def attach(self, model, method, cfg, calibration, targets=None):  # targets: the layers cfg asks for here
        if cfg.get("use_rslora"):
            raise NotSupported("patchlib scales by alpha/rank only: no rsLoRA")
        if not targets:
            raise ValueError(f"no module matches target_names={cfg.get('target_names')}")
        rest = {k: v for k, v in cfg.items() if k not in SELECTION}  # alpha, dtype, and what patchlib must refuse
        self.lib.attach(model, list(targets), rank=cfg["r"], seed=cfg["seed"], **rest)
        return model

    def adapted_layers(self, model):  # the patched layers themselves: calling one runs base + adapter
        return {n: model.get_submodule(n) for n in self.lib.adapters(model).names}

    def external(self, model, name): return self.lib.adapters(model).layer(name)  # noqa: E704
    def external_parameters(self, model): return list(self.lib.adapters(model).parameters())  # noqa: E704
    def save(self, model, path): self.lib.save(model, path)  # noqa: E704
    def load(self, base, path, method, cfg): return self.lib.load(base, path) and base  # noqa: E704
