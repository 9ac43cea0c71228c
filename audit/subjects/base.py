"""The subject protocol: the implementation under audit, as the checks see it.

A subject attaches *its own way* (its own targeting, init, dtype handling) to a base model, given a
card's name, the canonical config (a plain dict of the fields in references/STATE_LAYOUT.md) and
optional calibration batches, and then answers a few questions about what it did:

    attach(model, method, cfg, calibration[, targets]) -> model
                                                           required: the model to call (may be a wrapper);
                                                           ``targets`` (when the signature takes it): the
                                                           layers the config asks for in this model,
                                                           {name: audit.roles.Target(roles, kind, shape)}
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

import inspect
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from .transforms import as_transform

TRANSFORMS = ("identity", "transpose", "reshape")  # by name; transforms.py has the ones with parameters


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


def is_conv1d(mod: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D (GPT-2's projections), recognised by name and its ``nf``."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")


def linear_dims(mod: nn.Module, transposed: bool | None = None) -> tuple[int, int, bool]:
    """(d_in, d_out, weight stored transposed) of a dense layer: nn.Linear keeps (d_out, d_in), transformers'
    Conv1D (d_in, d_out); ``transposed`` says so where a subject's layers store it otherwise."""
    w = getattr(mod, "weight", None)
    if w is None or w.dim() != 2:
        raise LayoutError(f"{type(mod).__name__} is not a dense layer with a 2-D weight")
    if is_conv1d(mod) if transposed is None else transposed:  # W is (d_in, d_out)
        return w.shape[0], w.shape[1], True
    return w.shape[1], w.shape[0], False


class Subject:
    """Base class of every subject (see the module docstring). Subclass it in a driver."""

    kind: ClassVar[str] = "third-party"
    tensor_names: ClassVar[dict[str, dict[str, Any]]] = {}
    validates_config: ClassVar[bool] = True  # robustness audits the subject's own config validation
    # the base weight's orientation after attach: None, as transformers does (Conv1D stores (d_in, d_out),
    # everything else (d_out, d_in)); True, every base weight stored (d_in, d_out) (a fan_in_fan_out layer)
    fan_in_fan_out: ClassVar[bool | None] = None
    # config fields (canonical names) the library has no option for: {field: why}; a robustness case that
    # sets one is n/a with that reason instead of a failure to refuse it
    unsupported: ClassVar[dict[str, str]] = {}
    # how the library merges: "in_place" (merge / unmerge write the base weights), "state_dict" (merge
    # returns a merged state dict of the base model; there is no unmerge), "on_eval" (eval() merges,
    # train() unmerges: no merge method needed)
    merge_semantics: ClassVar[str] = "in_place"
    # the zoo models the library can attach to (None: any); a config corner the card runs on another
    # model runs on the first of these the plan audits instead
    models: ClassVar[tuple[str, ...] | None] = None
    label: str = ""
    version: str = ""
    # importable packages whose code is the library's (code_roots): its exceptions are findings about it
    code_packages: ClassVar[tuple[str, ...]] = ()

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

    def refuses(self, method: str, cfg: dict) -> str | None:
        """Why the subject cannot attach ``method`` under the canonical ``cfg`` at all (None: it may), found
        without building a model; a subject that refuses an init style is then audited under another init
        the card audits (audit/init_fallback.py). Default: it refuses nothing up front."""
        return None

    def lacks(self, method: str, cfg: dict, main: dict) -> str | None:
        """The tensors the paper formula reads under ``cfg`` but not under the card's ``main`` config that this
        subject declares no name for (an option beyond the library: peft's lora_bias for a library without
        it), as the reason the config is not audited here. A tensor the main config needs stays the layout
        finding it is."""
        names = self.tensor_names.get(method)
        if not names:
            return None
        from references import paper
        if method not in paper.VARIANTS:
            return None
        try:
            ref = paper.get(method)
            need = set(ref.layout(64, 64, cfg)) - set(ref.layout(64, 64, main))
        except (KeyError, ValueError, TypeError):
            return None
        missing = sorted(need - set(names))
        if not missing:
            return None
        return (f"{self.describe()} declares no tensor for {', '.join(missing)}, which the {method} formula reads "
                "under this config: the library lacks the option, so the config is not audited here")

    def base_layer(self, layer: nn.Module) -> nn.Module:
        if hasattr(layer, "get_base_layer"):
            return layer.get_base_layer()
        return getattr(layer, "base_layer", layer)

    def attach_with_targets(self, model: nn.Module, method: str, cfg: dict, calibration, default_roles) -> nn.Module:
        """``attach``, given the targets the config asks for in this model (``audit.roles.resolve_targets``:
        {module name: Target(name, roles, kind, shape)}) where the driver's attach takes a ``targets``
        keyword, so it adapts exactly those modules without guessing names from roles."""
        params = inspect.signature(self.attach).parameters
        if "targets" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
            from ..roles import resolve_targets
            try:
                targets = resolve_targets(model, cfg, default_roles)
            except Exception:  # noqa: BLE001 - a config the audit cannot read (a bad regex): the subject's to refuse
                targets = None
            return self.attach(model, method, cfg, calibration, targets=targets)
        return self.attach(model, method, cfg, calibration)

    def deviations(self, method: str) -> tuple:
        """The library's own declared departures from the paper for ``method`` (``audit.cards.Deviation``s
        naming it as who departs, each with its source): added to the card's for this subject's audit, so
        a library's findings live in its subject's module. Default: none."""
        return ()

    def weight_transposed(self, base_layer: nn.Module) -> bool:
        """Is this base layer's weight stored (d_in, d_out)? (``fan_in_fan_out``; default: a Conv1D is)."""
        return is_conv1d(base_layer) if self.fan_in_fan_out is None else bool(self.fan_in_fan_out)

    def external(self, model: nn.Module, name: str) -> Any:
        """The object holding layer ``name``'s tensors where the subject keeps them outside the model
        (paths starting with "@" in ``tensor_names`` resolve from it). Optional."""
        raise LayoutError(f"{self.describe()} declares a tensor path starting with '@' (state kept outside the "
                          "model) but no external(model, name) to resolve it from")

    def external_parameters(self, model: nn.Module) -> list[torch.Tensor]:
        """The trainable tensors the subject keeps outside ``model`` (an optimiser needs them; the audit
        restores them between checks). Default: none."""
        return []

    def layer_tensors(self, layer: nn.Module, method: str, model: nn.Module | None = None,
                      name: str = "") -> dict[str, tuple[torch.Tensor, str, str]]:
        """{canonical: (live tensor, transform, where)} of one adapted layer, from ``tensor_names``.

        A path is dotted under the adapted layer; "/path" is under the model's root (state shared by every
        layer, like VeRA's frozen pair kept at model level); "@path" is under ``external(model, name)``
        (state kept outside the model). A path may be a tuple of alternatives (e.g. where older releases
        kept the tensor), tried in order. A spec ``(path, transform, "optional")`` names a tensor a layer
        may lack (LoKr's factors exist per the layer's shape and rank): found nowhere, it is left out, and
        the handle's check against the formula's ``layout`` reports it if that layer's formula needs it."""
        def find(path: str, canonical: str) -> torch.Tensor:
            if path.startswith("/"):
                if model is None:
                    raise LayoutError(f"{self.describe()}: {path!r} is model-level but no model was given")
                return resolve(model, path[1:], canonical)
            if path.startswith("@"):
                return resolve(self.external(model, name), path[1:], canonical)
            return resolve(layer, path, canonical)

        out = {}
        for canonical, spec in self.tensor_names[method].items():
            paths, transform = (spec, "identity") if isinstance(spec, str) else spec[:2]
            optional = not isinstance(spec, str) and len(spec) > 2 and spec[2] == "optional"
            try:
                as_transform(transform)
            except ValueError as e:
                raise LayoutError(f"{self.describe()}: tensor {canonical!r}: {e}") from None
            paths = (paths,) if isinstance(paths, str) else tuple(paths)
            if len(paths) == 1 and not optional:
                out[canonical] = (find(paths[0], canonical), transform, paths[0])
                continue
            for path in paths:
                try:
                    out[canonical] = (find(path, canonical), transform, path)
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
    def save(self, model: nn.Module, path: str) -> str | None:
        """Write the adapter under ``path``; return the adapter's tensor file when the library writes
        more than one file (the checkpoint checks edit that one), else None. Optional."""
        raise NotSupported(f"{self.describe()} has no save")

    def load(self, base: nn.Module, path: str, method: str, cfg: dict) -> nn.Module:
        raise NotSupported(f"{self.describe()} has no load")

    def detach(self, model: nn.Module) -> nn.Module:
        raise NotSupported(f"{self.describe()} has no detach")

    def merge(self, model: nn.Module):
        """Write the adapter into the base weights (inference at the base's cost); with
        ``merge_semantics = "state_dict"``, return the merged state dict instead. Optional."""
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

    def code_roots(self) -> tuple[str, ...]:
        """Folders (or files) holding the library's own code: an exception raised there is a finding about
        the subject, not an audit error (audit/subject_errors.py). Default: the packages named in
        ``code_packages``, the module of a ``lib`` attribute, and a driver's own file outside audit/."""
        import importlib
        import os
        roots, modules = [], [getattr(self, "lib", None)]
        for package in self.code_packages:  # called while handling an exception: a missing package is no root
            try:
                modules.append(importlib.import_module(package))
            except ImportError:
                continue
        for module in modules:
            path = getattr(module, "__file__", None)
            if path:
                roots.append(os.path.dirname(path) if path.endswith("__init__.py") else path)
        driver = inspect.getsourcefile(type(self)) or ""
        if driver and not os.path.realpath(driver).startswith(os.path.dirname(os.path.dirname(__file__))):
            roots.append(driver)
        return tuple(roots)


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
