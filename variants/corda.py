"""CorDA, context-oriented decomposition adaptation (Yang et al., arXiv 2406.05223, §3.2-3.4).

    C = Σ_tokens x xᵀ  (the covariance of the layer inputs on calibration data, d_in × d_in)
    W C = U Σ Vᵀ (SVD),   W = (W C) C⁻¹ = Σ_i σ_i u_i (C⁻¹ v_i)ᵀ              (§3.2, eqs. (2)-(3))
    I = the r largest components (IPM, instruction-previewed) or the r smallest (KPM, knowledge-preserved)
    B = U_I diag(√(Σ_I/s)),  A = diag(√(Σ_I/s)) V_Iᵀ C⁻¹,  W_res = W − s·B A   (§3.3-3.4, eqs. (4)-(5))
    y = x W_resᵀ + b + s·(x Aᵀ) Bᵀ,   s = alpha / r

The paper has no scale (s = 1: alpha = r); like PiSSA, Σ_I is divided by s before the square root so that
s·BA = U_I Σ_I V_Iᵀ C⁻¹ for any alpha. C is accumulated in float64 over every token the attention mask keeps
(padding never counts; labels do not mask here: CorDA's context is the whole sample, its prompt included),
divided by the token count (the scale of C moves weight between A and B only, never s·BA). C is regularised
as C + λI, λ = DAMP·mean(diag C), before the decomposition, as the authors' released code does (and peft copies):
§3.2 needs C invertible, which a LayerNorm's zero-sum outputs (GPT-2: rank d_in − 1) or too few tokens break;
it damps a singular C by this λ form with a doubling schedule, no numbers given (audit/cards/corda.py; an
undamped C is the other accepted option). The SVD runs in
float64 and W_res is built from A and B after their cast to the adapter dtype (as PiSSA), so identity at
init is up to the rounding of W_res. init overwrites the layer weight with W_res; save() stores it and
detach() restores W. peft's CorDA checkpoint (init_lora_weights="corda") cannot be re-initialised from the
base alone (its corda_init needs preprocess_corda's covariance again): save_peft / load_peft refuse it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._layers import features
from .lora import Lora, LoraConfig, peft_lora_format

MODES = ("ipm", "kpm")
DAMP = 0.01  # the authors' code's λ / mean(diag C) (peft/tuners/lora/corda.py collect_eigens_for_layer: damp)


@dataclass(frozen=True)
class CordaConfig(LoraConfig):
    """corda_method: "ipm" adapts the r largest components of W C (instruction-previewed), "kpm" the r
    smallest (knowledge-preserved: the large ones stay frozen in W_res)."""

    variant = "corda"
    corda_method: str = "ipm"

    def check(self):
        super().check()
        if self.corda_method not in MODES:
            raise self.fail("corda_method", f"must be one of {MODES}, got {self.corda_method!r}")
        if self.use_rslora:
            raise self.fail("use_rslora", "CorDA has no rsLoRA scale; use alpha to set s = alpha / r")


def context_factors(w: torch.Tensor, cov: torch.Tensor, r: int, mode: str):
    """(U_I, Σ_I, V_Iᵀ C⁻¹) of the context-oriented SVD W C = U Σ Vᵀ in float64 (§3.2): I the r largest
    components (ipm) or the r smallest (kpm), in descending order of σ."""
    w, cov = w.to(torch.float64), cov.to(torch.float64)
    u, sv, vh = torch.linalg.svd(w @ cov, full_matrices=False)
    idx = slice(0, r) if mode == "ipm" else slice(sv.shape[0] - r, sv.shape[0])
    # V_Iᵀ C⁻¹ = (C⁻¹ V_I)ᵀ (C symmetric): a solve, not an explicit inverse
    vhat = torch.linalg.solve(cov, vh[idx].t()).t()
    return u[:, idx], sv[idx], vhat


class Corda(Lora):
    name = "corda"
    Config = CordaConfig
    needs_dense_weight = True
    needs_calibration = True
    mutates_base_weight = True
    # peft writes CorDA as A, B and init_lora_weights="corda", whose load re-runs corda_init: that needs
    # preprocess_corda's covariance again, so neither peft nor we rebuild W_res from the folder alone
    peft_format = peft_lora_format("corda", unloadable=(
        "peft's checkpoint holds A and B only, and W_res = W − s·BA needs the calibration covariance again "
        "(peft's corda_init raises without preprocess_corda; peft converts at save time with "
        "path_initial_model_for_weight_conversion instead)"))

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): the SVD of W C has no more components")

    def group_init(self, model, targets, cfg, calibration_data):
        from ._calibration import collect_inputs
        cov = {n: torch.zeros(features(m)[0], features(m)[0], dtype=torch.float64) for n, m in targets.items()}
        count = dict.fromkeys(targets, 0)

        def add(n, x):
            x = x.to("cpu", torch.float64)
            cov[n] += x.t() @ x
            count[n] += x.shape[0]

        collect_inputs(model, targets, calibration_data, add, ignore_label=None)
        s = self.scale(cfg, cfg.r)
        for n, mod in targets.items():
            c = cov[n] / max(count[n], 1)
            if count[n] == 0 or not float(torch.diagonal(c).max()) > 0:
                raise ValueError(f"CorDA: module {n!r} saw no nonzero calibration input ({count[n]} tokens)")
            c = c + DAMP * torch.diagonal(c).mean() * torch.eye(c.shape[0], dtype=c.dtype)
            u, sv, vhat = context_factors(self.weight(mod), c, mod.adapter_rank, cfg.corda_method)
            root = torch.sqrt(sv / s)
            with torch.no_grad():
                mod.adapter_A.copy_(root[:, None] * vhat)
                mod.adapter_B.copy_(u * root[None, :])
                a, b = mod.adapter_A.to(torch.float64), mod.adapter_B.to(torch.float64)
                w = self.weight(mod)
                w.copy_(w.to(torch.float64) - s * (b @ a))
