"""LoRA (Hu et al., arXiv 2106.09685, eq. 3) with the rsLoRA scale (Kalajdzievski, arXiv 2312.03732).

    y = x Wᵀ + b + s · (x Aᵀ) Bᵀ,   A (r, d_in), B (d_out, r),   s = alpha / r  (rsLoRA: alpha / √r)

lora_bias (peft's option, for adapters extracted from full fine-tunes): B carries a bias b_B (d_out,),
scaled with the product: y = x Wᵀ + b + s · ((x Aᵀ) Bᵀ + b_B); b_B = 0 at init, merged into b.

Init (peft's, not the paper's Gaussian A): A ~ kaiming_uniform(a=√5) = U(±1/√d_in), B = 0, so the
layer equals the base exactly at init. At step 0, A's gradient is exactly zero (B = 0).
Deviation from the paper: A's init distribution (uniform, as peft) instead of Gaussian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._inplace import owns_output, recording
from ._peft_format import PeftFormat, conv1d_targets, pattern_value
from ._tensor_init import kaiming_uniform_


@dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """use_rslora: s = alpha/√r; dropout: p of the dropout on the adapter branch's input, in training
    only (the LoRA paper's and peft's lora_dropout; 0 = none); lora_bias: a trainable bias b_B on B
    (the lora variant only)."""

    variant = "lora"
    training_only = ("dropout",)
    extensions = ("lora_bias",)
    use_rslora: bool = False
    dropout: float = 0.0
    lora_bias: bool = False

    def check(self):
        if not 0.0 <= self.dropout < 1.0:
            raise self.fail("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.lora_bias and self.variant != "lora":
            raise self.fail("lora_bias", f"a bias on B is audited on the lora variant only, not {self.variant}")


def add_lowrank(y: torch.Tensor, h: torch.Tensor, b: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """y + h Bᵀ as one fused BLAS call when dtypes agree (else computed in B's dtype, added in y's).

    Given the hooked ``layer``, the product is accumulated into y itself when that is safe
    (``_inplace.owns_output``): addmm_ on the flattened output, or baddbmm_ on a (batch, seq, d)
    output under autograd (y keeps its identity, so no view is modified). Same arithmetic, one
    (tokens × d_out) allocation and copy fewer than the out-of-place addmm.
    """
    if y.dtype != b.dtype:
        return y + (h @ b.t()).to(y.dtype)
    bt = b.t()
    grad = recording(y, h, b)
    if layer is not None and owns_output(layer, y, grad):
        if not grad:
            y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), bt)
            return y
        if y.dim() == 2:
            return y.addmm_(h, bt)
        if y.dim() == 3:
            return y.baddbmm_(h, bt.expand(y.shape[0], *bt.shape))
    return torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), bt).view(y.shape)


def lora_delta(layer, x: torch.Tensor, y: torch.Tensor, s: float, dropout: float = 0.0) -> torch.Tensor:
    """y + s·(drop(x) Aᵀ)Bᵀ in the adapter dtype; s is applied to the rank-r activations (cheapest
    place); drop is dropout with p = ``dropout`` while the layer is in training mode."""
    a, b = layer.adapter_A, layer.adapter_B
    if dropout and layer.training:
        x = torch.nn.functional.dropout(x, dropout, training=True)
    return add_lowrank(y, (x.to(a.dtype) @ a.t()) * s, b, layer)


# -- peft's LoraConfig (peft.tuners.lora): lora_A.weight (r, d_in), lora_B.weight (d_out, r) as ours ----------
_LORA_READS = ("r", "lora_alpha", "use_rslora", "lora_dropout", "rank_pattern", "alpha_pattern",
               "init_lora_weights", "use_dora", "lora_bias")
# LoRA inits that only draw A and B (which the file's tensors replace); the others rewrite the base
# weight (pissa*, olora, corda, loftq, lora_ga) or change the forward (mica) and belong to their variant
_PLAIN_INITS = (True, False, "gaussian", "orthogonal")


def peft_lora_scales(pcfg, shapes) -> tuple[dict[str, int], float]:
    """({module: rank from its lora_A}, the one scaling every layer has) of a peft LoRA config: peft's
    scaling is lora_alpha (or its alpha_pattern entry) / r_l, or / √r_l with use_rslora. Layers with
    different scalings cannot be one config here: refused naming them."""
    ranks, scales = {}, {}
    for m, sh in shapes.items():
        ranks[m] = int(sh["A"][0])
        a = pattern_value(pcfg.get("alpha_pattern"), m, pcfg.get("lora_alpha", 8))
        scales[m] = a / (math.sqrt(ranks[m]) if pcfg.get("use_rslora") else ranks[m])
    s = next(iter(scales.values()))
    if any(abs(v - s) > 1e-6 * abs(s) for v in scales.values()):
        raise ValueError(f"the layers of this peft LoRA adapter have different scalings (alpha_l / r_l): "
                         f"{dict(list(scales.items())[:4])}; one adapter here has one scale")
    return ranks, s


def _peft_lora_fields(pcfg, shapes):
    ranks, s = peft_lora_scales(pcfg, shapes)
    if len(set(ranks.values())) != 1:
        raise ValueError(f"the layers of this peft LoRA adapter have different ranks {sorted(set(ranks.values()))} "
                         "(rank_pattern): only EVA (init_lora_weights='eva') loads per-layer ranks here")
    r = next(iter(ranks.values()))
    rs = bool(pcfg.get("use_rslora"))
    return {"r": r, "alpha": s * (math.sqrt(r) if rs else r), "use_rslora": rs,
            "dropout": float(pcfg.get("lora_dropout") or 0.0), "lora_bias": bool(pcfg.get("lora_bias"))}


def peft_lora_config(cfg, st, init, **extra) -> dict:
    """peft LoraConfig fields of one of our LoRA-family adapters."""
    return {"r": cfg.r, "lora_alpha": cfg.alpha, "use_rslora": cfg.use_rslora, "lora_dropout": cfg.dropout,
            "lora_bias": cfg.lora_bias, "bias": "none", "init_lora_weights": init,
            "fan_in_fan_out": conv1d_targets(st), **extra}


def peft_lora_format(init, *, claim=None, fields=_peft_lora_fields, to_config=None, dora=False, bias=False,
                     **kw) -> PeftFormat:
    """The PeftFormat of a LoRA-family variant written with ``init_lora_weights=init`` (claimed for any
    init in ``claim``, default just ``init``); ``to_config`` default: ``peft_lora_config`` with that init."""
    claim = (init,) if claim is None else claim
    tensors = {"A": "lora_A.weight", "B": "lora_B.weight", **({"b_B": "lora_B.bias"} if bias else {})}
    if dora:
        tensors["m"] = "lora_magnitude_vector"  # peft saves DoraLinearLayer.weight under the module's own name
    if to_config is None:
        def to_config(cfg, st):
            return peft_lora_config(cfg, st, init, **({"use_dora": True} if dora else {}))
    return PeftFormat(
        peft_type="LORA", tensors=tensors, to_config=to_config, from_config=fields, reads=_LORA_READS,
        claims=lambda pcfg, names: (pcfg.get("peft_type") == "LORA" and bool(pcfg.get("use_dora")) == dora
                                    and any(pcfg.get("init_lora_weights", True) is c if isinstance(c, bool)
                                            else pcfg.get("init_lora_weights") == c for c in claim)),
        fixed={"bias": ("none",)}, inert=("qalora_group_size", "loftq_config", "eva_config", "corda_config"),
        **{"conv1d": None, **kw})


class Lora(Variant):
    name = "lora"
    Config = LoraConfig
    peft_format = peft_lora_format(True, claim=_PLAIN_INITS, bias=True)

    def param_specs(self, d_in, d_out, r, cfg):
        specs = {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r))}
        return {**specs, "b_B": ParamSpec((d_out,))} if getattr(cfg, "lora_bias", False) else specs

    @staticmethod
    def scale(cfg, r):
        return cfg.alpha / math.sqrt(r) if getattr(cfg, "use_rslora", False) else cfg.alpha / r

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):  # rank(BA) ≤ min(d_in, d_out): the extra rank-1 terms are redundant
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): the update cannot have a higher rank")

    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_A, gen)
        layer.adapter_B.zero_()
        if cfg.lora_bias:
            layer.adapter_b_B.zero_()

    def forward(self, layer, x, y):
        s = self.scale(self.cfg, layer.adapter_rank)
        y = lora_delta(layer, x, y, s, self.cfg.dropout)
        if self.cfg.lora_bias:  # b_B scaled with the product (peft: lora_B(lora_A(x)) * scaling)
            y = y + (s * layer.adapter_b_B).to(y.dtype)
        return y
