"""LoKr, low-rank Kronecker adaptation (LyCORIS: Yeh et al., arXiv 2309.14859, §3).

    ΔW = γ·(W₁ ⊗ W₂),   y = x Wᵀ + b + x ΔWᵀ,   W₁ (out_l, in_m), W₂ (out_k, in_n)

with d_out = out_l·out_k and d_in = in_m·in_n the divisor pairs of LyCORIS's ``factorization`` (nearest
√d, or capped at ``decompose_factor``). W₂ = W₂ₐW₂ᵦ (rank r) when r < max(out_k, in_n)/2, else full;
W₁ = W₁ₐW₁ᵦ likewise only with ``decompose_both`` (r < max(out_l, in_m)/2). γ = alpha/r, and γ = 1 when
both factors are full (no rank is involved: the authors' code; peft keeps alpha/r there).
The hook never forms ΔW: with X = x reshaped (…, in_m, in_n), x ΔWᵀ = γ·vec(W₁ X W₂ᵀ).
Init ``init_style="lycoris"`` (default, the authors' code): W₂ (or W₂ᵦ) = 0, the rest kaiming-uniform;
``"peft"``: W₁ (or W₁ₐ) = 0. Either way ΔW = 0 exactly at init; the other Kronecker side (and the
zero factor's partner) gets an exactly zero gradient at step 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, exact_key, pattern_value, peft_type_is
from ._tensor_init import kaiming_uniform_


@dataclass(frozen=True)
class LokrConfig(AdapterConfig):
    """decompose_both  also factor W₁ as W₁ₐW₁ᵦ (rank r) where r < max(out_l, in_m)/2
    decompose_factor  −1: factor each dimension near its square root; f > 0: the first factor is f
                      when f divides the dimension, else the largest divisor pair with first ≤ f
    init_style        "lycoris": W₂ (or W₂ᵦ) = 0; "peft": W₁ (or W₁ₐ) = 0"""

    variant = "lokr"
    decompose_both: bool = False
    decompose_factor: int = -1
    init_style: Literal["lycoris", "peft"] = "lycoris"

    def check(self):
        if self.decompose_factor == 0 or self.decompose_factor < -1:
            raise self.fail("decompose_factor", f"must be -1 (near √dim) or a positive integer, got {self.decompose_factor}")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m·n = dimension, m ≤ n: LyCORIS's divisor pair (see LokrConfig.decompose_factor)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    small, big = 1, dimension
    cand = 2
    while small < big:
        while dimension % cand:
            cand += 1
        if cand + dimension // cand > small + big or cand > limit:
            break
        small, big = cand, dimension // cand
        cand += 1
    return min(small, big), max(small, big)


def shapes(d_in: int, d_out: int, r: int, cfg: LokrConfig) -> tuple[tuple[int, int, int, int], bool, bool]:
    """((out_l, out_k, in_m, in_n), W₁ full, W₂ full)."""
    in_m, in_n = factorization(d_in, cfg.decompose_factor)
    out_l, out_k = factorization(d_out, cfg.decompose_factor)
    full1 = not (cfg.decompose_both and r < max(out_l, in_m) / 2)
    full2 = r >= max(out_k, in_n) / 2
    return (out_l, out_k, in_m, in_n), full1, full2


# peft scales ΔW by alpha/r on every layer; LyCORIS (ours) by 1 where both factors are full (w1 and w2)
def _peft_full_full(cfg, st) -> dict:
    """alpha_pattern giving peft's alpha_l / r = 1 on our full-full layers (empty when alpha = r)."""
    return {exact_key(n): float(cfg.r) for n, m in st.targets.items()
            if hasattr(m, "adapter_w1") and hasattr(m, "adapter_w2") and cfg.alpha != cfg.r}


def _peft_lokr_fields(pcfg, shapes) -> dict:
    r, alpha = int(pcfg.get("r", 8)), float(pcfg.get("alpha", 8.0))
    off = []
    for m, sh in shapes.items():
        a = pattern_value(pcfg.get("alpha_pattern"), m, alpha)
        want = float(r) if "w1" in sh and "w2" in sh else alpha  # peft's alpha_l / r must be ours: 1 or alpha / r
        if abs(a - want) > 1e-12 * abs(want):
            off.append(f"{m}: {a / r:g} (ours {want / r:g})")
    if off:
        raise ValueError("peft scales kron(w1, w2) by alpha/r on every layer, LyCORIS (ours) by 1 where both factors "
                         f"are full and by one alpha/r elsewhere; this adapter's scales cannot be ours: {off[:4]}")
    return {"r": r, "alpha": alpha, "decompose_both": bool(pcfg.get("decompose_both", False)),
            "decompose_factor": int(pcfg.get("decompose_factor", -1))}


class Lokr(Variant):
    name = "lokr"
    Config = LokrConfig
    # peft's LoKrConfig: lokr_w1 / lokr_w1_a / lokr_w1_b / lokr_w2 / lokr_w2_a / lokr_w2_b as ours (which of
    # them a layer has follows from its shape, r and decompose_both, the same rule in both)
    peft_format = PeftFormat(
        peft_type="LOKR", claims=peft_type_is("LOKR"),
        tensors={t: f"lokr_{t}" for t in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")},
        to_config=lambda cfg, st: {"r": cfg.r, "alpha": cfg.alpha, "alpha_pattern": _peft_full_full(cfg, st),
                                   "decompose_both": cfg.decompose_both,
                                   "decompose_factor": cfg.decompose_factor, "rank_dropout": 0.0,
                                   "module_dropout": 0.0, "init_weights": True},
        from_config=lambda pcfg, shapes: _peft_lokr_fields(pcfg, shapes),
        reads=("r", "alpha", "alpha_pattern", "decompose_both", "decompose_factor"),
        inert=("init_weights", "use_effective_conv2d"), training_only=("rank_dropout", "module_dropout"))

    def param_specs(self, d_in, d_out, r, cfg):
        (out_l, out_k, in_m, in_n), full1, full2 = shapes(d_in, d_out, r, cfg)
        specs = {"w1": ParamSpec((out_l, in_m))} if full1 else {
            "w1_a": ParamSpec((out_l, r)), "w1_b": ParamSpec((r, in_m))}
        specs.update({"w2": ParamSpec((out_k, in_n))} if full2 else {
            "w2_a": ParamSpec((out_k, r)), "w2_b": ParamSpec((r, in_n))})
        return specs

    @staticmethod
    def gamma(cfg, r, both_full: bool) -> float:
        """γ = alpha/r, or 1 when W₁ and W₂ are both full matrices."""
        return 1.0 if both_full else cfg.alpha / r

    def init(self, layer, cfg, gen):
        names = [n for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b") if hasattr(layer, "adapter_" + n)]
        if cfg.init_style == "lycoris":
            zero = "w2" if "w2" in names else "w2_b"
        else:
            zero = "w1" if "w1" in names else "w1_a"
        for n in names:
            t = self.p(layer, n)
            if n == zero:
                t.zero_()
            else:
                kaiming_uniform_(t, gen)

    @staticmethod
    def factor(layer, side: str) -> torch.Tensor:
        full = getattr(layer, f"adapter_{side}", None)
        if full is not None:
            return full
        return getattr(layer, f"adapter_{side}_a") @ getattr(layer, f"adapter_{side}_b")

    def forward(self, layer, x, y):
        w1, w2 = self.factor(layer, "w1"), self.factor(layer, "w2")
        both_full = hasattr(layer, "adapter_w1") and hasattr(layer, "adapter_w2")
        g = self.gamma(self.cfg, layer.adapter_rank, both_full)
        h = x.to(w2.dtype).reshape(*x.shape[:-1], w1.shape[1], w2.shape[1])  # X: (…, in_m, in_n)
        h = torch.matmul(w1, h @ w2.t())                                     # W₁ X W₂ᵀ: (…, out_l, out_k)
        return y + (g * h).reshape(*x.shape[:-1], w1.shape[0] * w2.shape[0]).to(y.dtype)
