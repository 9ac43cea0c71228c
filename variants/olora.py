"""OLoRA (Büyükakyüz, arXiv 2406.01775, §3): orthonormal LoRA init from a QR of the pretrained weight.

    W = Q R (reduced QR of the canonical W (d_out, d_in)),  B = Q[:, :r],  A = R[:r, :]
    W_res = W − s·B A  (the frozen base weight is replaced),   y = x W_resᵀ + b + s·(x Aᵀ) Bᵀ
    s = alpha / r  (rsLoRA: alpha / √r)

The QR runs in float64 on the canonical weight (Variant.weight: the transpose view for Conv1D, so a
square Conv1D is not decomposed the wrong way round), with signs fixed so that diag(R) ≥ 0 (the
unique QR of a full-rank W). W_res is built from A and B *after* they are cast to the adapter
dtype (as PiSSA), so identity at init is up to the rounding of W_res only. init overwrites the
layer weight with W_res; save() stores it and detach() restores W. A and B both get gradients at
step 0 (neither is zero). r > min(d_in, d_out) is refused (the QR has no more columns).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .lora import Lora, LoraConfig, peft_lora_format


@dataclass(frozen=True)
class OloraConfig(LoraConfig):
    variant = "olora"


def top_r_qr(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q[:, :r], R[:r]) of the reduced QR of w in float64, signed so that diag(R) ≥ 0."""
    q, rr = torch.linalg.qr(w.detach().to(torch.float64), mode="reduced")
    sign = torch.sign(torch.diagonal(rr))
    sign[sign == 0] = 1
    return (q * sign)[:, :r], (rr * sign[:, None])[:r]


class Olora(Lora):
    name = "olora"
    Config = OloraConfig
    needs_dense_weight = True
    mutates_base_weight = True
    # as PiSSA: init_lora_weights="olora", re-run on the original base (W_res = W − s·Q_r R_r, whatever signs)
    peft_format = peft_lora_format("olora", reinit=True, conv1d=(
        "peft's OLoRA init takes the QR of a Conv1D's stored (d_in, d_out) weight without transposing it "
        "(peft/tuners/lora/layer.py olora_init; reports/peft/olora.md), so peft would rebuild another W_res"))

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): the QR has no more columns")

    def init(self, layer, cfg, gen):
        s = self.scale(cfg, layer.adapter_rank)
        q, rr = top_r_qr(self.weight(layer), layer.adapter_rank)
        layer.adapter_A.copy_(rr)
        layer.adapter_B.copy_(q)
        a, b = layer.adapter_A.to(torch.float64), layer.adapter_B.to(torch.float64)
        self.weight(layer).copy_(self.weight(layer).to(torch.float64) - s * (b @ a))
