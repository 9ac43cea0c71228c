"""Driver for hooklib (tests/thirdparty/hooklib), an outside LoRA/IA3 hook library: a name map, a config translation.
Run: python -m audit run --subject examples/hooklib_driver.py:HooklibDriver --variants lora,ia3 --out out/hooklib"""
import sys
from pathlib import Path

from audit.subjects import NotSupported, Subject

try:
    import hooklib
except ImportError:  # not on the path: use the copy in this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1] / "tests" / "thirdparty"))
    import hooklib

RENAME = {"r": "rank", "use_rslora": "rslora", "dtype": "adapter_dtype"}  # canonical field -> HookConfig field
TARGETING = ("target_roles", "target_names", "exclude_names", "layers")  # translated below, not renamed


class HooklibDriver(Subject):
    label, lib = "hooklib (example third-party hook library)", hooklib
    tensor_names = {"lora": {"A": "lora_down", "B": ("lora_up", "transpose")}, "ia3": {"l": ("ia3_scale", "reshape")}}

    def attach(self, model, method, cfg, calibration):
        if cfg.get("exclude_names") or cfg.get("layers") is not None:
            raise NotSupported("hooklib selects layers by leaf names or a regex only: no exclude_names / layers")
        roles, kw = cfg.get("target_roles"), {RENAME.get(k, k): v for k, v in cfg.items() if k not in TARGETING}
        leaves = None if roles is None else tuple(f"{r}_proj" for r in roles)  # role "q" -> leaf q_proj (zoo naming)
        config = self.lib.HookConfig(method=method, targets=leaves, regex=tuple(cfg.get("target_names") or ()), **kw)
        return self.lib.attach(model, config)

    def adapted_layers(self, model):
        return self.lib.adapted_modules(model)

    def save(self, model, path):
        self.lib.save(model, path)

    def load(self, base, path, method, cfg):
        return self.lib.load(base, path)

    def detach(self, model):
        return self.lib.detach(model)
