"""The ``ours`` subject: this repo's hook runtime (variants/), optionally with another Variant class
(``--subject module:Class`` naming a ``variants.Variant`` subclass, as the mutants and the
alternative implementations do): attach, targeting, save and load are the runtime's own."""
from __future__ import annotations

import inspect
from typing import Any, Iterable

from torch import nn

import variants

from .base import Subject


class Ours(Subject):
    kind = "ours"
    code_packages = ("variants",)

    def __init__(self, variant: type[variants.Variant] | None = None, label: str = ""):
        self.variant = variant  # None: the registry's class for the card
        self.label = label or ("ours (variants/)" if variant is None else f"ours runtime + {label or variant.__name__}")
        self.version = ""

    def variant_for(self, method: str) -> type[variants.Variant]:
        return self.variant or variants.REGISTRY[method]

    def code_roots(self) -> tuple[str, ...]:
        """variants/ and, for a user's Variant subclass, the file that defines it."""
        extra = () if self.variant is None else (inspect.getsourcefile(self.variant) or "",)
        return super().code_roots() + tuple(p for p in extra if p)

    def supports(self, method: str) -> str | None:
        if self.variant is None and method not in variants.REGISTRY:
            return f"variants/ has no {method!r}"
        return None

    def config(self, method: str, cfg: dict):
        return self.variant_for(method).Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})

    def default_config(self, method: str) -> dict:
        """The Config class's own defaults for the method's fields (targeting, dtype and seed left out)."""
        common = ("dtype", "target_names", "target_roles", "exclude_names", "layers", "seed")
        return {k: v for k, v in self.variant_for(method).Config().to_dict(function_only=True).items() if k not in common}

    def attach(self, model: nn.Module, method: str, cfg: dict, calibration: Iterable[Any] | None) -> nn.Module:
        return variants.attach(model, self.config(method, cfg), calibration_data=calibration,
                               variant=self.variant_for(method))

    def adapted_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        return dict(variants.state_of(model).targets)

    def layer_tensors(self, layer: nn.Module, method: str):
        return {k: (t, "identity", variants.PREFIX + k) for k, t in variants.adapter_tensors(layer).items()}

    def base_layer(self, layer: nn.Module) -> nn.Module:
        return layer  # hooks on the layer itself

    def save(self, model: nn.Module, path: str) -> None:
        variants.save(model, path)

    def load(self, base: nn.Module, path: str, method: str, cfg: dict) -> nn.Module:
        return variants.load(base, path, variant=self.variant_for(method))

    def detach(self, model: nn.Module) -> nn.Module:
        return variants.detach(model)

    def merge(self, model: nn.Module) -> nn.Module:
        return variants.merge(model)

    def unmerge(self, model: nn.Module) -> nn.Module:
        return variants.unmerge(model)


def ours_handle(model: nn.Module):
    """The canonical handle on a model our runtime adapted (variants.attach already called)."""
    from .handle import Adapted
    st = variants.state_of(model)
    return Adapted(Ours(variant=type(st.variant)), model, st.variant.name, st.cfg.to_dict(function_only=True))
