"""The subject protocol: the implementation under audit, as the checks see it.

A subject attaches *its own way* (its own targeting, init, dtype handling) to a base model, given a
card's name, the canonical config (a plain dict of the fields in references/STATE_LAYOUT.md) and
optional calibration batches, and then answers a few questions about what it did:

    attach(model, method, cfg, calibration) -> model     required: the model to call (may be a wrapper)
    adapted_layers(model) -> {name: module}                required: the layers it adapted, named as in the
                                                           base model; calling the module is the adapted layer
    tensor_names[method] = {canonical: "path" | (path, transform) | (path, transform, "optional")}
                                                           required (data): where each canonical tensor
                                                           lives, relative to the adapted layer module
                                                           (path: a dotted path, or a tuple of them tried
                                                           in order); transform "identity", "transpose"
                                                           or "reshape"
    base_layer(layer) -> module                            default: get_base_layer() / .base_layer / itself;
                                                           its .weight (W_res where the method mutates it)
                                                           and .bias are the layer's frozen base
    supports(method) -> None | reason                      default: supported if tensor_names has the method
    save(model, path) / load(base, path, method, cfg)      optional: save_load is n/a without them
    detach(model) -> model                                 optional

Everything else (reading and setting the canonical state, gradients, the trainable set) is derived
from those by ``audit.subjects.handle.Adapted``, so a third-party library with other tensor names
joins through a driver that is mostly a declared name map. ``kind`` says which declared deviations
of a card apply: "peft" deviations describe peft wherever it runs, card-level ("paper")
deviations describe the method itself.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterable

import torch
from torch import nn

TRANSFORMS = ("identity", "transpose", "reshape")


class NotSupported(Exception):
    """The subject cannot do what a check asks (an optional part, or a method it lacks)."""


class LayerNotSupported(NotSupported):
    """The subject refuses the kind of layer the targets are (peft's HRA, DeLoRA and RoAd take
    nn.Linear only, not GPT-2's Conv1D): the placement check measures it, the other checks are n/a."""


class LayoutError(ValueError):
    """A subject's tensors cannot be mapped onto the canonical layout; the message names the tensor."""


class LayoutFinding(LayoutError):
    """The subject's state is not what the paper's formula reads: a tensor the formula needs is not there
    (DoRA without its magnitude), one it cannot account for is (an extra gate), or one has another shape.
    A measured finding about the subject (failing "layout" rows), not a broken map (an error):
    ``findings`` holds (metric, message) per problem. Raised when a check asks for the canonical state;
    checks that do not need it still run."""

    def __init__(self, findings: list[tuple[str, str]]):
        self.findings = list(findings)
        super().__init__("; ".join(m for _, m in self.findings))


class ShapeMismatch(LayoutFinding):
    """A subject's tensor is where its map says, but its shape is not the one the paper's formula gives
    for this layer and config (e.g. factors of the un-transposed Conv1D weight): a measured finding
    about the subject (a failing "layout" row a card may declare), not a broken map (an error)."""

    def __init__(self, message: str):
        super().__init__([("canonical_shape_mismatch", message)])


class Subject:
    """Base class of every subject (see the module docstring). Subclass it in a driver."""

    kind: ClassVar[str] = "third-party"
    tensor_names: ClassVar[dict[str, dict[str, Any]]] = {}
    validates_config: ClassVar[bool] = True  # robustness audits the subject's own config validation
    label: str = ""
    version: str = ""

    # -- required -----------------------------------------------------------------------------------
    def attach(self, model: nn.Module, method: str, cfg: dict, calibration: Iterable[Any] | None) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__}.attach")

    def adapted_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        raise NotImplementedError(f"{type(self).__name__}.adapted_layers")

    # -- defaults -----------------------------------------------------------------------------------
    def supports(self, method: str) -> str | None:
        if method not in self.tensor_names:
            return f"{self.describe()} declares no tensor names for {method!r} (supported: {sorted(self.tensor_names)})"
        return None

    def base_layer(self, layer: nn.Module) -> nn.Module:
        if hasattr(layer, "get_base_layer"):
            return layer.get_base_layer()
        return getattr(layer, "base_layer", layer)

    def layer_tensors(self, layer: nn.Module, method: str) -> dict[str, tuple[torch.Tensor, str, str]]:
        """{canonical: (live tensor, transform, where)} of one adapted layer, from ``tensor_names``.

        A path may be a tuple of alternatives (e.g. where older releases kept the tensor), tried in order.
        A spec ``(path, transform, "optional")`` names a tensor a layer may lack (LoKr's factors exist per
        the layer's shape and rank): found nowhere, it is left out, and the handle's check against the
        formula's ``layout`` reports it if that layer's formula needs it."""
        out = {}
        for canonical, spec in self.tensor_names[method].items():
            paths, transform = (spec, "identity") if isinstance(spec, str) else spec[:2]
            optional = not isinstance(spec, str) and len(spec) > 2 and spec[2] == "optional"
            if transform not in TRANSFORMS:
                raise LayoutError(f"{self.describe()}: tensor {canonical!r} has transform {transform!r}; "
                                  f"allowed: {', '.join(TRANSFORMS)}")
            paths = (paths,) if isinstance(paths, str) else tuple(paths)
            if len(paths) == 1 and not optional:
                out[canonical] = (resolve(layer, paths[0], canonical), transform, paths[0])
                continue
            for path in paths:
                try:
                    out[canonical] = (resolve(layer, path, canonical), transform, path)
                    break
                except LayoutError:
                    continue
            else:
                if optional:
                    continue
                raise LayoutError(f"{self.describe()}: canonical tensor {canonical!r} is at none of "
                                  f"{', '.join(map(repr, paths))} under {type(layer).__name__}")
        return out

    # -- optional -----------------------------------------------------------------------------------
    def save(self, model: nn.Module, path: str) -> None:
        raise NotSupported(f"{self.describe()} has no save")

    def load(self, base: nn.Module, path: str, method: str, cfg: dict) -> nn.Module:
        raise NotSupported(f"{self.describe()} has no load")

    def detach(self, model: nn.Module) -> nn.Module:
        raise NotSupported(f"{self.describe()} has no detach")

    def merge(self, model: nn.Module) -> nn.Module:
        """Write the adapter into the base weights (inference at the base's cost). Optional."""
        raise NotSupported(f"{self.describe()} has no merge")

    def unmerge(self, model: nn.Module) -> nn.Module:
        """Undo ``merge``: the base weights back, the adapter acting again. Optional."""
        raise NotSupported(f"{self.describe()} has no unmerge")

    def default_config(self, method: str) -> dict:
        """The method's fields (canonical names: r, alpha, ...) as this subject sets them when a user
        gives none: the "subject defaults" config a card may audit. Optional."""
        raise NotSupported(f"{self.describe()} declares no default config")

    def can(self, part: str) -> bool:
        """Does this subject implement the optional ``part`` ("save", "load", "detach", "merge", "unmerge")?"""
        return getattr(type(self), part) is not getattr(Subject, part)

    def describe(self) -> str:
        return self.label or type(self).__name__


def resolve(layer: nn.Module, path: str, canonical: str = "") -> torch.Tensor:
    """The tensor at dotted ``path`` under ``layer`` (attributes, submodules, dict-like containers)."""
    obj: Any = layer
    for part in path.split("."):
        try:
            obj = obj[part] if isinstance(obj, (nn.ModuleDict, nn.ParameterDict, dict)) else getattr(obj, part)
        except (AttributeError, KeyError):
            what = f"canonical tensor {canonical!r}" if canonical else "a tensor"
            raise LayoutError(f"{what} is declared at {path!r}, but {type(layer).__name__} has no {part!r} "
                              "there") from None
    if not isinstance(obj, torch.Tensor):
        raise LayoutError(f"canonical tensor {canonical!r} declared at {path!r} is a {type(obj).__name__}, "
                          "not a tensor")
    return obj
