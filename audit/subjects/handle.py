"""Adapted: one attached subject, seen through the canonical layout (references/STATE_LAYOUT.md).

Built from a subject's answers (its adapted layers and its tensor-name map), it gives the checks
everything in canonical form: the state per layer (read and set), gradients, the trainable tensors,
each layer's live base weight and bias. The map is validated against the paper formula's own
``layout`` when the handle is built, so a layout that does not fit is one LayoutError naming the
tensor; a layout the formula cannot read (a tensor missing, an extra one, a wrong shape) is kept as
findings and raised (LayoutFinding) when a check asks for the canonical state, so the checks that
need none still run.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from references import paper

from .base import LayoutError, LayoutFinding, ShapeMismatch, Subject, is_conv1d, linear_dims  # noqa: F401
from .transforms import Transform, as_transform


def canonical_weight(mod: nn.Module, transposed: bool | None = None) -> torch.Tensor:
    """A dense layer's weight in canonical (d_out, d_in) layout: a transpose view where it is stored
    (d_in, d_out) (``transposed``; default: a Conv1D is), so ``copy_`` into it writes the layer's own weight."""
    return mod.weight.t() if linear_dims(mod, transposed)[2] else mod.weight


@dataclass
class Slot:
    """One canonical tensor of one layer: the subject's live tensor and how to map it (transforms.py)."""

    tensor: torch.Tensor
    transform: Transform | str  # a Transform, or the name of a plain one ("identity", "transpose", "reshape")
    where: str      # the subject's path, for messages
    shape: tuple | None = None  # canonical shape (None entries: any size)

    def __post_init__(self):
        self.transform = as_transform(self.transform)

    def canonical(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """``t`` (default: the live tensor) in canonical layout (a view where possible)."""
        return self.transform.read(self.tensor if t is None else t, self.shape)

    def grad(self, g: torch.Tensor) -> torch.Tensor:
        """The canonical gradient from the live tensor's gradient ``g``."""
        return self.transform.grad(g, self.shape)

    def write(self, value: torch.Tensor) -> None:
        self.transform.write(self.tensor, value)

    @property
    def trainable(self) -> bool:
        return bool(self.tensor.requires_grad)


class Adapted:
    """A subject attached to a model: ``model`` is what the checks call; everything else is canonical."""

    def __init__(self, subject: Subject, model: nn.Module, method: str, cfg: dict):
        self.subject, self.model, self.method, self.cfg = subject, model, method, cfg
        self.layers: dict[str, nn.Module] = dict(subject.adapted_layers(model))
        if not self.layers:
            raise LayoutError(f"{subject.describe()} adapted no layer of the model")
        # layout findings (a tensor the formula needs and the subject lacks, one it cannot account for, a
        # wrong shape): kept, not raised, so the checks that need no canonical state still run; the
        # canonical accessors raise them as one LayoutFinding
        self.findings: dict[str, str] = {}
        self.slots = {n: self._slots(n, m) for n, m in self.layers.items()}

    # -- layout -------------------------------------------------------------------------------------
    def _slots(self, name: str, layer: nn.Module) -> dict[str, Slot]:
        d_in, d_out = self.dims(name)
        raw = _layer_tensors(self.subject, layer, self.method, self.model, name)
        want = self._layout(d_in, d_out, raw)
        who = f"{self.subject.describe()}, layer {name}"
        if want is None:
            return {k: Slot(t, tr, w) for k, (t, tr, w) in raw.items()}
        for k in want:
            if k not in raw:
                self.findings.setdefault(f"missing_tensor[{k}]", (
                    f"no {k!r}: the {self.method} formula needs tensor {k!r} {_shape(want[k])} and the subject does "
                    f"not store it ({who} maps {sorted(raw)}; references/STATE_LAYOUT.md)"))
        for k in raw:
            if k not in want:
                self.findings.setdefault(f"unexpected_tensor[{k}]", (
                    f"{who}: tensor {k!r} ({raw[k][2]}) is not part of the {self.method} layout {sorted(want)} under "
                    "this config: the paper formula cannot account for it"))
        out = {}
        for k, (t, tr, where) in raw.items():
            if k not in want:
                continue
            slot = Slot(t, tr, where, want[k])
            try:
                got = tuple(slot.canonical().shape)
            except RuntimeError as e:
                raise LayoutError(f"{who}: tensor {k!r} at {where} {tuple(t.shape)} cannot be mapped with "
                                  f"{tr!r} to {_shape(want[k])}: {e}") from None
            if len(got) != len(want[k]) or any(w is not None and g != w for g, w in zip(got, want[k])):
                hint = " (transpose?)" if tuple(reversed(got)) == tuple(want[k]) else ""
                self.findings.setdefault("canonical_shape_mismatch", (
                    f"{who}: tensor {k!r} at {where} maps ({tr}) to shape {got}, but the {self.method} layout wants "
                    f"{_shape(want[k])}{hint}"))
                continue
            out[k] = slot
        return out

    def _layout(self, d_in: int, d_out: int, raw: dict) -> dict[str, tuple] | None:
        """The layout the paper formula reads for this layer: the one it allows for the subject's own
        shapes where it allows several (``layout_given``), else its ``layout``; None without a formula."""
        if self.method not in paper.VARIANTS:
            return None
        ref = paper.get(self.method)
        if hasattr(ref, "layout_given"):
            given = {k: tuple(as_transform(tr).read(t.detach(), None).shape)
                     for k, (t, tr, _) in raw.items() if as_transform(tr).name != "reshape"}
            if len(given) == len(raw) and (fits := ref.layout_given(d_in, d_out, self.cfg, given)) is not None:
                return fits
        return ref.layout(d_in, d_out, self.cfg)

    def require_layout(self) -> None:
        """Raise the layout findings (a LayoutFinding; a ShapeMismatch when a shape is all that is wrong)
        before anything reads the canonical state."""
        if not self.findings:
            return
        if set(self.findings) == {"canonical_shape_mismatch"}:
            raise ShapeMismatch(self.findings["canonical_shape_mismatch"])
        raise LayoutFinding(list(self.findings.items()))

    # -- what the checks read -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.layers)

    def base_layer(self, name: str) -> nn.Module:
        return self.subject.base_layer(self.layers[name])

    def dims(self, name: str) -> tuple[int, int]:
        """(d_in, d_out) of the layer, its base weight read in the orientation the subject declares."""
        base = self.base_layer(name)
        return linear_dims(base, self.subject.weight_transposed(base))[:2]

    def weight(self, name: str) -> torch.Tensor:
        """The layer's live frozen weight in canonical (d_out, d_in) layout (W_res where mutated)."""
        base = self.base_layer(name)
        return canonical_weight(base, self.subject.weight_transposed(base))

    def bias(self, name: str) -> torch.Tensor | None:
        return getattr(self.base_layer(name), "bias", None)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """{canonical: live tensor in canonical layout} of one layer (views: gradients flow)."""
        self.require_layout()
        return {k: s.canonical() for k, s in self.slots[name].items()}

    def state(self, with_weight: bool = False) -> dict[str, dict[str, torch.Tensor]]:
        """Detached canonical copies {layer: {tensor: value}}; ``with_weight`` adds the live base
        weight as "weight" (W_res of the methods that mutate it)."""
        self.require_layout()
        out = {}
        for n, slots in self.slots.items():
            out[n] = {k: _copy(s.canonical(s.tensor.detach())) for k, s in slots.items()}
            if with_weight:
                out[n]["weight"] = _copy(self.weight(n).detach())
        return out

    def set_state(self, states: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write canonical values in (a "weight" entry overwrites the layer's base weight)."""
        self.require_layout()
        for n, values in states.items():
            for k, v in values.items():
                if k == "weight":
                    with torch.no_grad():
                        self.weight(n).copy_(v.to(self.weight(n).dtype))
                else:
                    self.slots[n][k].write(v)

    def grads(self) -> dict[str, dict[str, torch.Tensor]]:
        """{layer: {trainable tensor: its .grad in canonical layout, zeros where None}}."""
        self.require_layout()
        return {n: {k: _copy(s.grad(s.tensor.grad) if s.tensor.grad is not None
                             else torch.zeros_like(s.canonical()).detach())
                    for k, s in slots.items() if s.trainable}
                for n, slots in self.slots.items()}

    def adapter_tensor_ids(self) -> set[int]:
        return {id(s.tensor) for slots in self.slots.values() for s in slots.values()}

    def parameters(self) -> list[torch.Tensor]:
        """Every trainable tensor of the model and of the state the subject keeps outside it (what an
        optimiser gets), mapped or not."""
        seen, out = set(), []
        for p in (*self.model.parameters(), *self.subject.external_parameters(self.model)):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def rank(self, name: str) -> int:
        """The layer's rank: rows of A (or u), else the config's r."""
        st = self.slots[name]
        for k in ("A", "u"):
            if k in st:
                return int(st[k].canonical().shape[0])
        return int(self.cfg.get("r", 0) or 0)


def _layer_tensors(subject: Subject, layer: nn.Module, method: str, model: nn.Module, name: str) -> dict:
    """``subject.layer_tensors``, given the model and the layer's name where it takes them (an override
    written before they existed takes the layer and the method only)."""
    params = inspect.signature(subject.layer_tensors).parameters
    if "model" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return subject.layer_tensors(layer, method, model=model, name=name)
    return subject.layer_tensors(layer, method)


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy (a transposed view's clone would keep its strides, and its matmuls round differently)."""
    return t.clone(memory_format=torch.contiguous_format)


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
