"""LoRA-GA, low-rank adaptation with gradient approximation (Wang, Yu, Li, arXiv 2407.05000, §3.2-3.3, Alg. 1).

    G = ∂ℓ/∂W on calibration batches (the mean of the batches' gradients),  G = U S Vᵀ (SVD)
    A = c·V_Iᵀ (r, d_in),  B = c·U_J (d_out, r),  c = d_out^{1/4}/√γ  ("stable output" scale, §3.3;
    ``scale`` "unit" c = 1 and "gd_scale" c = 1/η are the authors' code's ablations)
    W_res = W − s·B A,   y = x W_resᵀ + b + s·(x Aᵀ) Bᵀ,   s = alpha/r  (rsLoRA alpha/√r: Alg. 1's η = α/√r)

I, J: disjoint index sets of the top 2r singular pairs (§3.2: any split of the top 2r makes the first step's
η²(G AᵀA + BBᵀG) the best rank-2r approximation of G, up to ζ). ``direction`` picks the split: "ArB2r"
(Algorithm 1: A from V_[1:r], B from U_[r+1:2r], the default), "A2rBr" (A from r+1..2r, B from 1..r), "ArBr"
(A from the even-numbered pairs 2, 4, .., B from the odd ones 1, 3, ..: 1-based). ℓ is the next-token
cross-entropy of the calibration batches (variants/_calibration.causal_lm_loss: labels = -100 and padding
ignored). The gradient is accumulated and decomposed in float64 (an exact SVD: no randomised svd_lowrank);
W_res is built from A and B after their cast to the adapter dtype (as PiSSA), so identity at init is up to
the rounding of W_res. init overwrites the layer weight with W_res; save() stores it and detach() restores W.
peft's LoRA-GA checkpoint cannot rebuild W_res from the base alone (it needs the gradient again): save_peft and
load_peft refuse it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._layers import dense_weight
from .lora import Lora, LoraConfig, peft_lora_format

DIRECTIONS = ("ArB2r", "A2rBr", "ArBr")
# the factor c on A and B: "stable" the paper's d_out^{1/4}/√γ (§3.3); "unit" 1 and "gd_scale" 1/η, the authors'
# code's ablations (peft's too; peft's "weight_svd" is neither the paper's nor the authors' "weightS": refused)
SCALES = ("stable", "unit", "gd_scale")


def factor_scale(scale: str, d_out: int, gamma: float, eta: float) -> float:
    """c with A = c·V_Iᵀ, B = c·U_J."""
    return {"stable": d_out ** 0.25 / gamma ** 0.5, "unit": 1.0, "gd_scale": 1.0 / eta}[scale]


def split_indices(direction: str, r: int) -> tuple[list[int], list[int]]:
    """(A's singular-pair indices, B's) among the top 2r, 0-based, in the order they fill A's rows / B's columns."""
    if direction == "ArB2r":
        return list(range(r)), list(range(r, 2 * r))
    if direction == "A2rBr":
        return list(range(r, 2 * r)), list(range(r))
    if direction == "ArBr":
        return list(range(1, 2 * r, 2)), list(range(0, 2 * r, 2))
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


@dataclass(frozen=True)
class LoraGaConfig(LoraConfig):
    """direction: which of the top 2r singular pairs of G go to A and which to B (DIRECTIONS); scale: the factor c
    on both (SCALES: "stable" c = d_out^{1/4}/√γ, §3.3; "unit" 1; "gd_scale" 1/η); stable_gamma: its γ."""

    variant = "loraga"
    direction: str = "ArB2r"
    scale: str = "stable"
    stable_gamma: float = 16.0

    def check(self):
        super().check()
        if self.direction not in DIRECTIONS:
            raise self.fail("direction", f"must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.scale not in SCALES:
            raise self.fail("scale", f"must be one of {SCALES}, got {self.scale!r}")
        if not self.stable_gamma > 0:
            raise self.fail("stable_gamma", f"must be > 0, got {self.stable_gamma}")


class LoraGa(Lora):
    name = "loraga"
    Config = LoraGaConfig
    needs_dense_weight = True
    needs_calibration = True
    mutates_base_weight = True
    peft_format = peft_lora_format("lora_ga", unloadable=(
        "peft's checkpoint holds A and B only, and W_res = W − s·BA needs the calibration gradient again "
        "(peft's lora_ga_init falls back to a random A, B = 0 and leaves W unchanged; peft converts at save time "
        "with path_initial_model_for_weight_conversion instead)"))

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if 2 * cfg.r > min(d_in, d_out):
            raise self.rank_error(cfg, name, min(d_in, d_out) // 2,
                                  "min(d_in, d_out)/2: A and B take 2r distinct singular pairs of the gradient")

    def group_init(self, model, targets, cfg, calibration_data):
        from ._calibration import collect_gradients
        grads, _ = collect_gradients(model, targets, calibration_data)
        for n, mod in targets.items():
            r = mod.adapter_rank
            s = self.scale(cfg, r)
            u, _, vh = torch.linalg.svd(grads[n], full_matrices=False)
            ia, ib = split_indices(cfg.direction, r)
            w = dense_weight(mod)
            c = factor_scale(cfg.scale, w.shape[0], cfg.stable_gamma, s)
            with torch.no_grad():
                mod.adapter_A.copy_(c * vh[ia])
                mod.adapter_B.copy_(c * u[:, ib])
                a, b = mod.adapter_A.to(torch.float64), mod.adapter_B.to(torch.float64)
                w.copy_(w.to(torch.float64) - s * (b @ a))
