"""VeRA, vector-based random matrix adaptation (Kopiczko, Blankevoort, Asano, arXiv 2310.11454, §3.1 eq. 1).

    h = W₀x + Λ_b B Λ_d A x:   ΔW = diag(λ_b) B_s diag(λ_d) A_s,   W_eff = W + ΔW,  bias unchanged

A (r, D_in) and B (D_out, r) are ONE frozen random pair shared by every adapted layer, sized by the
largest (d_out, d_in) among them; a layer uses the leading blocks A_s = A[:, :d_in], B_s = B[:d_out, :]
(peft's layout). Only λ_d (r) and λ_b (d_out) train, per layer. The pair is regenerable from the
seed (``cfg.seed`` is VeRA's projection PRNG key): drawn on CPU from torch.Generator().manual_seed(seed),
A first then B, kaiming-uniform U(±√6/√fan_in) with the fan-in of the full matrix (D_in for A, r
for B), in float32 — the same stream as peft, so both give the same A, B for the same key.
Init (§3.1): λ_b = 0 (exact identity), λ_d = d_initial. At step 0 λ_d's gradient is exactly zero.

Every layer registers the same two tensors as its ``adapter_A`` / ``adapter_B`` buffers (not
Parameters: never trained); a checkpoint stores them once (variants/_io.py) and load shares them again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, conv1d_targets, peft_type_is
from .lora import add_lowrank


@dataclass(frozen=True)
class VeraConfig(AdapterConfig):
    """r: rank of the shared pair (peft default 256; r may exceed d_in); d_initial: λ_d's initial value.
    alpha is not used (VeRA has no scale); seed is the projection PRNG key."""

    variant = "vera"
    unused = ("alpha",)
    r: int = 256
    d_initial: float = 0.1

    def check(self):
        if not math.isfinite(self.d_initial) or self.d_initial == 0:
            raise self.fail("d_initial", f"must be finite and non-zero (λ_b = 0 and λ_d = 0 is a stationary "
                                         f"point: nothing would ever train), got {self.d_initial}")


def draw_projections(r: int, d_in: int, d_out: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared pair (A (r, d_in), B (d_out, r)) of VeRA §3.1, float32 on CPU: kaiming-uniform
    (gain √2) with the full matrix's fan-in, from one generator seeded with ``key``, A first."""
    gen = torch.Generator(device="cpu").manual_seed(key)
    a = torch.empty(r, d_in).uniform_(-math.sqrt(6.0 / d_in), math.sqrt(6.0 / d_in), generator=gen)
    b = torch.empty(d_out, r).uniform_(-math.sqrt(6.0 / r), math.sqrt(6.0 / r), generator=gen)
    return a, b


class Vera(Variant):
    name = "vera"
    Config = VeraConfig
    # peft's VeraConfig: the shared pair saved once as base_model.vera_A / vera_B (save_projection=True; a
    # checkpoint without them would need peft's PRNG to regenerate them and is refused)
    peft_format = PeftFormat(
        peft_type="VERA", claims=peft_type_is("VERA"), shared=("A", "B"),
        tensors={"A": "vera_A", "B": "vera_B", "lambda_b": "vera_lambda_b", "lambda_d": "vera_lambda_d"},
        to_config=lambda cfg, st: {"r": cfg.r, "d_initial": cfg.d_initial, "projection_prng_key": cfg.seed,
                                   "save_projection": True, "vera_dropout": 0.0, "init_weights": True,
                                   "bias": "none", "fan_in_fan_out": conv1d_targets(st)},
        from_config=lambda pcfg, shapes: {"r": int(pcfg.get("r", 256)), "d_initial": float(pcfg.get("d_initial", 0.1)),
                                          "seed": int(pcfg.get("projection_prng_key", 0))},
        reads=("r", "d_initial", "projection_prng_key"), fixed={"save_projection": (True, None), "bias": ("none",)},
        inert=("init_weights",), training_only=("vera_dropout",), conv1d=None)

    def __init__(self, cfg):
        super().__init__(cfg)
        self._dims: dict[str, tuple[int, int]] = {}  # every target's (d_in, d_out), seen by check_layer
        self._shared: tuple[torch.Tensor, torch.Tensor] | None = None

    def check_layer(self, name, layer, d_in, d_out, cfg):
        # the runtime validates every target before allocating any tensor: the shared pair's size is
        # the largest (d_in, d_out) among them (peft: VeraModel._find_dim)
        self._dims[name] = (d_in, d_out)

    def _size(self, d_in: int, d_out: int) -> tuple[int, int]:
        return (max([d_in, *(d[0] for d in self._dims.values())]),
                max([d_out, *(d[1] for d in self._dims.values())]))

    def param_specs(self, d_in, d_out, r, cfg):
        big_in, big_out = self._size(d_in, d_out)
        return {"A": ParamSpec((r, big_in), trainable=False), "B": ParamSpec((big_out, r), trainable=False),
                "lambda_b": ParamSpec((d_out,)), "lambda_d": ParamSpec((r,))}

    def init(self, layer, cfg, gen):
        a, b = layer.adapter_A, layer.adapter_B
        if self._shared is None:  # first layer: draw the pair once, in the adapter dtype and device
            big_a, big_b = draw_projections(a.shape[0], a.shape[1], b.shape[0], cfg.seed)
            self._shared = (big_a.to(a.device, a.dtype), big_b.to(b.device, b.dtype))
        layer.register_buffer("adapter_A", self._shared[0], persistent=True)
        layer.register_buffer("adapter_B", self._shared[1], persistent=True)
        layer.adapter_lambda_b.zero_()
        layer.adapter_lambda_d.fill_(cfg.d_initial)

    def forward(self, layer, x, y):
        lam_b, lam_d = layer.adapter_lambda_b, layer.adapter_lambda_d
        a = layer.adapter_A[:, : x.shape[-1]]
        b = layer.adapter_B[: lam_b.shape[0], :]
        # ΔW = (diag(λ_b) B_s)(diag(λ_d) A_s): the diagonals scale the small factors, not the activations
        h = x.to(a.dtype) @ (lam_d[:, None] * a).t()
        return add_lowrank(y, h, lam_b[:, None] * b, layer)
