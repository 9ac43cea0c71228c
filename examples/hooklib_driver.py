"""Driver for hooklib (tests/thirdparty/hooklib), an outside LoRA/IA3 hook library: a name map, a config translation.
Run: python -m audit run --subject examples/hooklib_driver.py:HooklibDriver --variants lora,ia3 --out out/hooklib"""
import re
import sys
from pathlib import Path

from audit.subjects import Subject

try:
    import hooklib
except ImportError:  # not on the path: use the copy in this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests" / "thirdparty"))
    import hooklib

RENAME = {"r": "rank", "use_rslora": "rslora", "dtype": "adapter_dtype"}  # canonical field -> HookConfig field
TARGETING = ("target_roles", "target_names", "exclude_names", "layers")  # resolved by the audit: `targets`


class HooklibDriver(Subject):
    label, lib = "hooklib (example third-party hook library)", hooklib
    tensor_names = {"lora": {"A": "lora_down", "B": ("lora_up", "transpose")}, "ia3": {"l": ("ia3_scale", "reshape")}}

    def attach(self, model, method, cfg, calibration, targets=None):  # targets: {module name: roles, kind, shape}
        kw = {RENAME.get(k, k): v for k, v in cfg.items() if k not in TARGETING}
        exact = tuple(f"^{re.escape(n)}$" for n in targets or ())  # hooklib selects by regex: the exact names
        config = self.lib.HookConfig(method=method, regex=exact or tuple(cfg.get("target_names") or ("(?!)",)), **kw)
        return self.lib.attach(model, config)

    def adapted_layers(self, model):
        return self.lib.adapted_modules(model)

    def save(self, model, path):
        self.lib.save(model, path)

    def load(self, base, path, method, cfg):
        return self.lib.load(base, path)

    def detach(self, model):
        return self.lib.detach(model)
