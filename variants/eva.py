"""EVA, Explained Variance Adaptation (Paischer et al., arXiv 2410.07170, §3 eq. 2-3).

Forward as LoRA: y = x Wᵀ + b + s·(x Aᵀ) Bᵀ, s = alpha / r (the config r for every layer, i.e.
peft's adjust_scaling_factors=True). Init: the rows of A are the top-r_l principal directions of
the layer's inputs collected from ``calibration_data`` (mean-centred, like peft's IncrementalPCA),
B = 0, so identity is exact and A's gradient is 0 at step 0.
Rank redistribution (``rho`` > 1): each layer offers round(r·rho) components; all layers'
explained-variance ratios are pooled and the global top (r × number of layers) kept; a layer left
with rank 0 loses its adapter (as in peft). rho = 1 keeps rank r everywhere.
Deviation from peft: the principal directions come from an exact float64 eigendecomposition of the
covariance over all calibration tokens, not a seeded incremental svd_lowrank stopped at cosine
0.99, so directions agree with peft's only up to its approximation; signs are fixed so the
largest-magnitude entry of each direction is positive.
Options (peft's EvaConfig): adjust_scaling_factors=False keeps alpha on every layer (s_l = alpha/r_l);
whiten divides each direction by the square root of its singular value σ_i of the centred token matrix
(σ_i = √(n·λ_i), λ_i the covariance eigenvalue, n the tokens seen); use_label_mask / label_mask_value:
which labels mark calibration tokens to leave out (attention_mask 0 always does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._layers import features
from ._state import allocate, remove_tensors
from ._peft_format import exact_key
from .lora import Lora, LoraConfig, lora_delta, peft_lora_config, peft_lora_format, peft_lora_scales


@dataclass(frozen=True)
class EvaConfig(LoraConfig):
    variant = "eva"
    extensions = ("lora_bias", "adjust_scaling_factors", "whiten", "use_label_mask", "label_mask_value")
    rho: float = 1.0
    adjust_scaling_factors: bool = True
    whiten: bool = False
    use_label_mask: bool = True
    label_mask_value: int = -100

    def check(self):
        if self.rho < 1.0:
            raise self.fail("rho", f"must be >= 1 (1 = no rank redistribution), got {self.rho}")
        if self.use_rslora:
            raise self.fail("use_rslora", "not supported for EVA here")


class _Moments:
    """Running sums for a mean-centred covariance in float64."""

    def __init__(self, d: int):
        self.n, self.sum, self.outer = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        x = x.to("cpu", torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.t() @ x

    def principal(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues descending, eigenvectors as rows) of the covariance."""
        mean = self.sum / self.n
        cov = self.outer / self.n - torch.outer(mean, mean)
        vals, vecs = torch.linalg.eigh(cov)
        vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1).t()
        idx = vecs.abs().argmax(dim=1)
        sign = torch.sign(vecs[torch.arange(vecs.shape[0]), idx])
        sign[sign == 0] = 1
        return vals, vecs * sign[:, None]


def _peft_eva_config(cfg, st) -> dict:
    """Each layer's rank in rank_pattern and alpha_l = s·r_l in alpha_pattern, so that peft's scaling
    alpha_l / r_l is our s = alpha / r everywhere (peft's EVA: adjust_scaling_factors=True)."""
    ranks = {n: m.adapter_rank for n, m in st.targets.items()}
    s = cfg.alpha / cfg.r
    options = {k: getattr(cfg, k) for k in ("rho", "adjust_scaling_factors", "whiten", "use_label_mask",
                                            "label_mask_value")}
    return peft_lora_config(cfg, st, "eva", eva_config=options,
                            rank_pattern={exact_key(n): r for n, r in ranks.items()},
                            alpha_pattern={exact_key(n): s * r if cfg.adjust_scaling_factors else cfg.alpha
                                           for n, r in ranks.items()})


def _peft_eva_fields(pcfg, shapes) -> dict:
    eva = pcfg.get("eva_config") or {}
    r = int(pcfg["r"])
    options = {k: eva[k] for k in ("adjust_scaling_factors", "whiten", "use_label_mask", "label_mask_value")
               if k in eva}
    if not options.get("adjust_scaling_factors", True):  # every layer keeps lora_alpha: s_l = alpha / r_l
        return {"r": r, "alpha": float(pcfg.get("lora_alpha", 8)), "dropout": float(pcfg.get("lora_dropout") or 0.0),
                **options}
    _, s = peft_lora_scales(pcfg, shapes)
    return {"r": r, "alpha": s * r, "dropout": float(pcfg.get("lora_dropout") or 0.0), **options}


class Eva(Lora):
    name = "eva"
    Config = EvaConfig
    per_layer_rank = True
    peft_format = peft_lora_format("eva", to_config=_peft_eva_config, fields=_peft_eva_fields, per_layer_rank="A")
    needs_calibration = True

    def forward(self, layer, x, y):
        # s = alpha / r with the config's r on every layer, also where rank redistribution gave the
        # layer r_l ≠ r (peft's adjust_scaling_factors: alpha_l = alpha·r_l/r, so alpha_l/r_l = alpha/r);
        # without it alpha / r_l
        r = self.cfg.r if self.cfg.adjust_scaling_factors else layer.adapter_rank
        return lora_delta(layer, x, y, self.scale(self.cfg, r), self.cfg.dropout)

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > d_in:
            raise self.rank_error(cfg, name, d_in, "d_in: no more principal directions of the inputs")

    def group_init(self, model, targets, cfg, calibration_data):
        moments = {n: _Moments(features(m)[0]) for n, m in targets.items()}
        from ._calibration import collect_inputs
        collect_inputs(model, targets, calibration_data, lambda n, x: moments[n].add(x),
                       cfg.label_mask_value if cfg.use_label_mask else None)
        offer = {n: min(round(cfg.r * cfg.rho), features(m)[0]) for n, m in targets.items()}
        for n, mom in moments.items():
            if mom.n < offer[n]:
                raise ValueError(f"EVA: module {n!r} saw {mom.n} calibration tokens, fewer than the "
                                 f"{offer[n]} components it needs; give more calibration_data")
        eig = {n: mom.principal() for n, mom in moments.items()}
        ranks = self._ranks(eig, offer, cfg.r * len(targets))
        for n in list(targets):
            mod = targets[n]
            if ranks[n] == 0:
                remove_tensors(mod)
                del targets[n]
                continue
            if ranks[n] != mod.adapter_rank:
                allocate(mod, self, cfg, ranks[n])
            a = eig[n][1][: ranks[n]]
            if cfg.whiten:  # σ_i = √(n·λ_i): the singular values of the centred (tokens, d_in) matrix
                a = a / (moments[n].n * eig[n][0][: ranks[n]]).clamp(min=1e-300).pow(0.25)[:, None]
            with torch.no_grad():
                mod.adapter_A.copy_(a)
                mod.adapter_B.zero_()

    @staticmethod
    def _ranks(eig, offer, budget):
        pooled = []
        for n, (vals, _) in eig.items():
            ratio = vals / vals.sum().clamp(min=1e-300)
            pooled += [(float(ratio[i]), n, i) for i in range(offer[n])]
        pooled.sort(key=lambda t: (-t[0], t[1], t[2]))
        ranks = dict.fromkeys(eig, 0)
        for _, n, _ in pooled[:budget]:
            ranks[n] += 1
        return ranks
