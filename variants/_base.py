"""The variant protocol: what a variant class provides to the runtime.

A variant is a small class. The runtime creates the tensors from ``param_specs``, registers them
on the target layer under ``PREFIX + name``, calls ``init`` (and ``group_init`` for data-driven
inits), then hooks either ``forward`` (output hook: gets the layer input x and base output y) or
``forward_input`` (pre-hook: returns the new input). A user's own implementation subclasses
``Variant`` in their own module and is attached with ``attach(model, cfg, variant=MyVariant)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from ._affine import effective_affine
from ._config import AdapterConfig
from ._layers import dense_weight
from ._peft_format import PeftFormat

PREFIX = "adapter_"


@dataclass(frozen=True)
class ParamSpec:
    """One adapter tensor: its shape, and whether it is a trainable Parameter or a buffer. ``dtype``: a fixed
    dtype (an integer buffer of positions, SHiRA's mask), else None for the adapter dtype."""

    shape: tuple[int, ...]
    trainable: bool = True
    dtype: torch.dtype | None = None


class Variant:
    """Base class of every adapter variant (see module docstring for the protocol)."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig
    hook: ClassVar[str] = "output"  # "output": forward(layer, x, y); "input": forward_input(layer, x)
    default_roles: ClassVar[tuple[str, ...]] = ("q", "k", "v", "o", "gate", "up", "down")
    needs_dense_weight: ClassVar[bool] = False  # reads/decomposes the base weight: nn.Linear or Conv1D only
    needs_calibration: ClassVar[bool] = False
    mutates_base_weight: ClassVar[bool] = False  # init overwrites layer.weight (PiSSA, AntiPaSTO)
    per_layer_rank: ClassVar[bool] = False  # a data-driven init may give layers ranks other than r (EVA)
    peft_format: ClassVar[PeftFormat | None] = None  # how peft stores it (variants.save_peft / load_peft)

    def __init__(self, cfg: AdapterConfig):
        self.cfg = cfg

    # -- shape and validation --------------------------------------------------------------------
    def param_specs(self, d_in: int, d_out: int, r: int, cfg: AdapterConfig) -> dict[str, ParamSpec]:
        raise NotImplementedError

    def check_layer(self, name: str, layer: nn.Module, d_in: int, d_out: int, cfg: AdapterConfig) -> None:
        """Raise ValueError if this layer cannot take the adapter under cfg (before any tensor)."""

    # -- init ------------------------------------------------------------------------------------
    def init(self, layer: nn.Module, cfg: AdapterConfig, gen: torch.Generator) -> None:
        """Fill the adapter tensors in place (under torch.no_grad)."""

    def group_init(self, model: nn.Module, targets: dict[str, nn.Module], cfg: AdapterConfig,
                   calibration_data: Iterable[Any] | None) -> None:
        """Optional model-wide init after per-layer init (EVA's data-driven init)."""

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- merge -----------------------------------------------------------------------------------
    def merged_weights(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W_eff in canonical (d_out, d_in) layout, b_eff or None) that ``variants.merge`` writes into
        the layer. Default: read off the hooked layer itself (``variants.effective_affine``), right for
        any variant affine in the layer input; a variant may give a closed form instead."""
        return effective_affine(layer)

    # -- helpers for implementations ---------------------------------------------------------------
    @staticmethod
    def p(layer: nn.Module, name: str) -> torch.Tensor:
        """The adapter tensor ``name`` of ``layer``."""
        return getattr(layer, PREFIX + name)

    @staticmethod
    def weight(layer: nn.Module) -> torch.Tensor:
        """The base weight W in canonical (d_out, d_in) layout: a transpose view for Conv1D, so
        ``copy_`` into it writes the layer's own weight."""
        return dense_weight(layer)

    @staticmethod
    def rank(layer: nn.Module) -> int:
        return layer.adapter_rank  # set by the runtime

    @staticmethod
    def scale(cfg: AdapterConfig, r: int) -> float:
        return cfg.alpha / r

    @staticmethod
    def rank_error(cfg: AdapterConfig, name: str, limit: int, why: str) -> ValueError:
        return ValueError(f"{type(cfg).__name__}.r: r={cfg.r} exceeds {limit} ({why}) for module {name!r}")
