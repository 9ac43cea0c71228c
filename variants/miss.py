"""MiSS, matrix shard sharing (Kang, Yin, arXiv 2409.15371; earlier versions titled Bone, then DiSHA), §4.1-4.2.

One trainable matrix per layer, three forms (``mode``):

    balance  ΔW = [Dᵀ | Dᵀ | … | Dᵀ] (d_out, d_in), D (r, d_out): every r-wide shard of the input shares D
             (the paper's efficient form MiSSᵉ, §4.2 eqs. (4)-(7), its D (d_out, r) stored transposed),
             so y = x Wᵀ + b + (Σ_k x_[k]) D with x_[k] the k-th r-wide slice of x. Where r does not
             divide d_in the last shard is partial (x zero-padded): ΔW[:, k] = D[k mod r, :]ᵀ.
    mini     the same with D itself tiled from D_small (r, mini_r) along d_out:
             D[:, o] = D_small[:, o mod mini_r] (mini_r must divide d_out).
    bat      the block-affine ("Bat") form: W cut in r × r blocks W_ij (i over d_out/r output blocks,
             j over d_in/r input blocks), B (d_out/r, r, r) one block per OUTPUT row i:
             W'_ij = W_ij + W_ij B_i + B_i. ΔW depends on W (r must divide d_in and d_out).

No scale. Init: D = 0 (B = 0), so ΔW = 0 exactly; every entry gets a gradient at step 0 (ΔW is
linear in D with the base weight or ones as the other factor). The hook never forms ΔW for balance
and mini (a shard sum and one r-wide GEMM, like LoRA's second factor); bat builds the dense ΔW from the
canonical weight (Conv1D: its transpose view); where the layer, input and adapter share a dtype it recomputes
y = x (W + ΔW)ᵀ + b (the base output is discarded: backward costs what a merged layer's does, but a forward
hook cannot skip the layer's own GEMM, so forward does one GEMM more than peft's wrapper, which replaces the
layer's forward; bat is the one MiSS form slower than peft in fwd+bwd), else it adds
x ΔWᵀ to the base output (a bf16 base stays exactly itself at init).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._layers import is_conv1d
from ._peft_format import PeftFormat, peft_type_is
from .lora import add_lowrank

_PEFT_INIT = {"balance": True, "bat": "bat", "mini": "mini"}  # our mode -> peft's init_weights


@dataclass(frozen=True)
class MissConfig(AdapterConfig):
    """r: the shard size (peft's r, default 64; r ≤ d_in); mode: "balance" (shared shard D (r, d_out)),
    "bat" (block-affine, B (d_out/r, r, r), r divides d_in and d_out), "mini" (D tiled from (r, mini_r));
    mini_r: read only by mode "mini" (it must divide d_out). alpha is not used (MiSS has no scale)."""

    variant = "miss"
    unused = ("alpha",)
    r: int = 64
    mode: Literal["balance", "bat", "mini"] = "balance"
    mini_r: int = 1

    def check(self):
        if self.mini_r <= 0:
            raise self.fail("mini_r", f"must be a positive integer, got {self.mini_r}")
        if self.mode != "mini" and self.mini_r != 1:
            raise self.fail("mini_r", f"is read only with mode='mini' (got mini_r={self.mini_r} with "
                                      f"mode={self.mode!r}): leave it unset")


def shard_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """Σ_k x_[k] (…, r): the r-wide slices of the last axis summed, the last one zero-padded."""
    pad = -x.shape[-1] % r
    if pad:
        x = F.pad(x, (0, pad))
    return x.unflatten(-1, (x.shape[-1] // r, r)).sum(-2)


def bat_delta(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ΔW of the block-affine form: blocks W_ij B_i + B_i (W (d_out, d_in), B (d_out/r, r, r))."""
    n_out, r = b.shape[0], b.shape[-1]
    blocks = w.reshape(n_out, r, w.shape[1] // r, r)                      # [i, a, j, c] = W_ij[a, c]
    delta = torch.einsum("iajc,icd->iajd", blocks, b) + b[:, :, None, :]  # W_ij B_i + B_i
    return delta.reshape(w.shape)


def dense_update(layer, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, dw: torch.Tensor) -> torch.Tensor:
    """y + x ΔWᵀ for a dense ΔW (d_out, d_in) that depends on W (MiSS bat, HiRA). Where the layer is nn.Linear and
    x, W and ΔW share a dtype, y is recomputed as x (W + ΔW)ᵀ + b instead (the base output is discarded): one GEMM
    each way in backward, as a merged layer, instead of two, and at ΔW = 0 the same call on the same values as the
    base layer's, so still exactly it. Otherwise (Conv1D's stored layout, a bf16 base under float32 adapters) the
    product is added to the base output, which keeps the base exact at ΔW = 0 too."""
    if x.dtype == dw.dtype == w.dtype and not is_conv1d(layer):
        return F.linear(x, w + dw, getattr(layer, "bias", None))
    return add_lowrank(y, x.to(dw.dtype), dw, layer)


class Miss(Variant):
    name = "miss"
    Config = MissConfig
    # peft's MissConfig: miss_block is ours in every form ((r, d_out), (d_out/r, r, r), (r, mini_r)); peft's
    # init_weights selects the form (True balance, "bat", "mini"; False: balance with a random init)
    peft_format = PeftFormat(
        peft_type="MISS", claims=peft_type_is("MISS"), tensors={"D": "miss_block"},
        to_config=lambda cfg, st: {"r": cfg.r, "init_weights": _PEFT_INIT[cfg.mode], "mini_r": cfg.mini_r,
                                   "miss_dropout": 0.0, "bias": "none"},
        from_config=lambda pcfg, shapes: {
            "r": int(pcfg.get("r", 64)),
            "mode": pcfg["init_weights"] if pcfg.get("init_weights") in ("bat", "mini") else "balance",
            "mini_r": int(pcfg.get("mini_r", 1)) if pcfg.get("init_weights") == "mini" else 1},
        reads=("r", "init_weights", "mini_r"), fixed={"bias": ("none",)}, training_only=("miss_dropout",))

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > d_in:
            raise self.rank_error(cfg, name, d_in, "d_in: the shard size is at most the input width")
        if cfg.mode == "bat" and (d_in % cfg.r or d_out % cfg.r):
            raise ValueError(f"{type(cfg).__name__}.r: mode 'bat' cuts W into r × r blocks, so r={cfg.r} must divide "
                             f"both d_in={d_in} and d_out={d_out} of module {name!r}")
        if cfg.mode == "mini" and d_out % cfg.mini_r:
            raise ValueError(f"{type(cfg).__name__}.mini_r: mode 'mini' tiles D along d_out, so mini_r={cfg.mini_r} "
                             f"must divide d_out={d_out} of module {name!r}")

    def param_specs(self, d_in, d_out, r, cfg):
        shape = {"balance": (r, d_out), "bat": (d_out // r, r, r), "mini": (r, cfg.mini_r)}[cfg.mode]
        return {"D": ParamSpec(shape)}

    def init(self, layer, cfg, gen):
        layer.adapter_D.zero_()  # §4.1: the shared shard starts at zero, ΔW = 0 exactly

    def forward(self, layer, x, y):
        d = layer.adapter_D
        if self.cfg.mode == "bat":
            w = self.weight(layer)
            return dense_update(layer, x, y, w, bat_delta(w.to(d.dtype), d))
        if self.cfg.mode == "mini":
            d = d.repeat(1, y.shape[-1] // d.shape[1])  # D[:, o] = D_small[:, o mod mini_r]
        return add_lowrank(y, shard_sum(x.to(d.dtype), d.shape[0]), d.t(), layer)
