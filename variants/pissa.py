"""PiSSA (Meng, Wang, Zhang, arXiv 2404.02948, §3 eq. 2-5): principal singular values and vectors.

    W = U S Vᵀ (top r),  A = diag(√(S_r/s)) V_rᵀ,  B = U_r diag(√(S_r/s)),  W_res = W − s·B A
    y = x W_resᵀ + b + s·(x Aᵀ) Bᵀ,   s = alpha / r

The paper has no scale (s = 1, i.e. alpha = r, the default here); like peft we divide S_r by s
before the square root so that s·B A = U_r S_r V_rᵀ for any alpha. The SVD runs in float64 and
W_res is built from A and B *after* they are cast to the adapter dtype, so only the rounding of
W_res to the base dtype is left: identity at init is numerical (fp32 ~1e-7, bf16 ~2⁻⁸ relative).
init overwrites layer.weight with W_res; save() stores it with the adapter and detach() restores W.
Both A and B get gradients at step 0.
"""
from __future__ import annotations

import torch

from ._tensor_init import top_r_svd
from .lora import Lora, LoraConfig, peft_lora_format
from dataclasses import dataclass


@dataclass(frozen=True)
class PissaConfig(LoraConfig):
    variant = "pissa"

    def check(self):
        if self.use_rslora:
            raise self.fail("use_rslora", "PiSSA has no rsLoRA scale; use alpha to set s = alpha / r")


class Pissa(Lora):
    name = "pissa"
    Config = PissaConfig
    needs_dense_weight = True
    mutates_base_weight = True
    # written as peft writes PiSSA: A, B and init_lora_weights="pissa", which peft (and load_peft) re-run on
    # the original base to rebuild W_res = W − U_r S_r V_rᵀ before loading A, B (the top-r SVD of W; not
    # pissa_niter_k, whose randomised SVD gives another W_res)
    peft_format = peft_lora_format("pissa", reinit=True)

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): the SVD has no more components")

    def init(self, layer, cfg, gen):
        s = self.scale(cfg, layer.adapter_rank)
        u, sv, vh = top_r_svd(self.weight(layer), layer.adapter_rank)
        root = torch.sqrt(sv / s)
        layer.adapter_A.copy_(root[:, None] * vh)
        layer.adapter_B.copy_(u * root[None, :])
        a, b = layer.adapter_A.to(torch.float64), layer.adapter_B.to(torch.float64)
        self.weight(layer).copy_(self.weight(layer).to(torch.float64) - s * (b @ a))
