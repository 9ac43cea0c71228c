"""VB-LoRA, LoRA composed from a shared vector bank (Li, Han, Ji, NeurIPS 2024, arXiv 2405.15179, §3.2-3.3).

    ΔW = B A = Σ_{i<r} b_i a_iᵀ  (§3.2 eq. (3.1), the rank-one form),   W_eff = W + ΔW,  bias unchanged

Every column b_i of B (d_out) and row a_i of A (d_in) is cut into sub-vectors of length b
(``vector_length``), and each sub-vector is a top-k admixture of the rows of ONE vector bank
𝓑 (num_vectors, b) shared by every adapted layer (§3.3; the top-k admixture module, §3.2 eq. (3.3)):

    v = Σ_{s ∈ top-k(σ)} softmax(σ_top-k)_s · 𝓑_s,   σ: the sub-vector's num_vectors logits

Canonical state (peft's layout): ``bank`` (num_vectors, b), one trainable tensor shared by every layer;
``logits_A`` (r, d_in/b, num_vectors): logits_A[i, t] composes a_i[t·b:(t+1)·b]; ``logits_B``
(d_out/b, r, num_vectors): logits_B[t, i] composes b_i[t·b:(t+1)·b]. b must divide d_in and d_out.

Init (peft's, the authors' code): bank ~ U(±init_vector_bank_bound), logits ~ N(0, init_logits_std²).
Neither is zero, so VB-LoRA does NOT start at the base model: ΔW₀ = B₀A₀ ≠ 0, of size ≤ r·bound² per
entry (every sub-vector entry is a convex combination of bank entries, |·| ≤ bound). Only the top-k
logits of each sub-vector get a gradient (the others are outside the softmax).

Every layer registers the same Parameter as its ``adapter_bank``: its gradient sums over all layers, a
checkpoint stores it once (variants/_io.py ``shared``), and load shares it again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, conv1d_targets, peft_type_is
from ._tensor_init import normal_, uniform_
from .lora import add_lowrank


@dataclass(frozen=True)
class VBLoRAConfig(AdapterConfig):
    """r: the rank of ΔW = BA; num_vectors, vector_length: the bank's shape; topk: bank rows mixed per
    sub-vector; init_vector_bank_bound, init_logits_std: the init laws. save_only_topk_weights (peft's
    option): ``save_peft`` writes the top-k indices and weights instead of the logits (inference only)."""

    variant = "vblora"
    unused = ("alpha",)
    extensions = ("save_only_topk_weights",)
    r: int = 4
    num_vectors: int = 256
    vector_length: int = 256
    topk: int = 2
    init_vector_bank_bound: float = 0.02
    init_logits_std: float = 0.1
    save_only_topk_weights: bool = False

    def check(self):
        for fld in ("num_vectors", "vector_length", "topk"):
            if getattr(self, fld) <= 0:
                raise self.fail(fld, f"must be a positive integer, got {getattr(self, fld)}")
        if self.topk > self.num_vectors:
            raise self.fail("topk", f"must be at most num_vectors ({self.num_vectors}), got {self.topk}")
        if not (math.isfinite(self.init_vector_bank_bound) and self.init_vector_bank_bound > 0):
            raise self.fail("init_vector_bank_bound", f"must be finite and > 0 (a zero bank gives B = A = 0, a "
                                                      f"stationary point: nothing would train), got "
                                                      f"{self.init_vector_bank_bound}")
        if not (math.isfinite(self.init_logits_std) and self.init_logits_std >= 0):
            raise self.fail("init_logits_std", f"must be finite and >= 0, got {self.init_logits_std}")


def compose(logits: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k admixture (§3.2 eq. (3.3)) of every sub-vector: (..., num_vectors) logits -> (..., b)."""
    top, idx = torch.topk(logits, k, dim=-1)
    weights = torch.softmax(top, dim=-1)
    return (bank[idx] * weights.unsqueeze(-1)).sum(dim=-2)


def factors(logits_a: torch.Tensor, logits_b: torch.Tensor, bank: torch.Tensor, k: int):
    """(A (r, d_in), B (d_out, r)): a_i is the concatenation over t of sub-vector logits_A[i, t]; b_i (column
    i of B) that of logits_B[t, i]."""
    r = logits_a.shape[0]
    a = compose(logits_a, bank, k).reshape(r, -1)
    b = compose(logits_b, bank, k).permute(0, 2, 1).reshape(-1, r)  # (d_out/b, b, r): tiles stacked down
    return a, b


def _topk_pack(cfg, tensors: dict) -> dict:
    """peft's save_only_topk_weights form of the logits: per logits tensor its top-k indices (the smallest
    integer dtype peft picks for num_vectors) and the first k−1 softmax weights of them (the last is 1 − Σ)."""
    if not cfg.save_only_topk_weights:
        return tensors
    n = cfg.num_vectors
    idx_dtype = torch.uint8 if n < 2 ** 8 else torch.int16 if n < 2 ** 15 else torch.int32 if n < 2 ** 31 else torch.int64
    out = {}
    for key, t in tensors.items():
        if key.endswith(("vblora_logits_A", "vblora_logits_B")):
            top, idx = torch.topk(t, cfg.topk, dim=-1)
            out[key + "_topk_indices"] = idx.to(idx_dtype).contiguous()
            out[key + "_topk_weights"] = torch.softmax(top, dim=-1)[..., :-1].contiguous()
        else:
            out[key] = t
    return out


def _topk_unpack(pcfg, tensors: dict) -> dict:
    """Logits again from a save_only_topk_weights file: log(weight) at the stored top-k indices (the last weight
    1 − Σ of the others) and the dtype's lowest finite number elsewhere (peft writes −∞ there; any value below
    the top k gives the same top-k softmax, and ours keeps the tensors finite). The function is the saved one
    up to the rounding of softmax → log → softmax; the logits themselves are not (peft: inference only)."""
    if not pcfg.get("save_only_topk_weights"):
        return tensors
    n = int(pcfg.get("num_vectors", 256))
    out = {}
    for key, t in tensors.items():
        if key.endswith("_topk_weights"):
            continue
        if not key.endswith("_topk_indices"):
            out[key] = t
            continue
        stem = key[: -len("_topk_indices")]
        if stem + "_topk_weights" not in tensors:
            raise ValueError(f"{key} has no {stem}_topk_weights beside it (save_only_topk_weights stores both)")
        w = tensors[stem + "_topk_weights"]
        w = torch.cat([w, 1 - w.sum(dim=-1, keepdim=True)], dim=-1).clamp_min(0)
        low = torch.finfo(w.dtype).min
        logits = torch.full((*w.shape[:-1], n), low, dtype=w.dtype)
        out[stem] = logits.scatter(-1, t.long(), torch.log(w).clamp_min(low / 2))
    return out


class VBLoRA(Variant):
    name = "vblora"
    Config = VBLoRAConfig
    # peft's VBLoRAConfig: the bank saved once as base_model.vblora_vector_bank, the logits per layer
    peft_format = PeftFormat(
        peft_type="VBLORA", claims=peft_type_is("VBLORA"), shared=("bank",),
        tensors={"bank": "vblora_vector_bank", "logits_A": "vblora_logits_A", "logits_B": "vblora_logits_B"},
        to_config=lambda cfg, st: {
            "r": cfg.r, "num_vectors": cfg.num_vectors, "vector_length": cfg.vector_length, "topk": cfg.topk,
            "init_vector_bank_bound": cfg.init_vector_bank_bound, "init_logits_std": cfg.init_logits_std,
            "save_only_topk_weights": cfg.save_only_topk_weights, "vblora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": conv1d_targets(st)},
        from_config=lambda pcfg, shapes: {
            "r": int(pcfg.get("r", 4)), "num_vectors": int(pcfg.get("num_vectors", 256)),
            "vector_length": int(pcfg.get("vector_length", 256)), "topk": int(pcfg.get("topk", 2)),
            "init_vector_bank_bound": float(pcfg.get("init_vector_bank_bound", 0.02)),
            "init_logits_std": float(pcfg.get("init_logits_std", 0.1)),
            "save_only_topk_weights": bool(pcfg.get("save_only_topk_weights", False))},
        reads=("r", "num_vectors", "vector_length", "topk", "init_vector_bank_bound", "init_logits_std",
               "save_only_topk_weights"),
        # a top-k-only folder holds indices and weights, not logits: packed and unpacked (see _topk_pack)
        fixed={"bias": ("none",)},
        training_only=("vblora_dropout",), conv1d=None, pack=_topk_pack, unpack=_topk_unpack)

    def __init__(self, cfg):
        super().__init__(cfg)
        self._bank: torch.nn.Parameter | None = None

    def check_layer(self, name, layer, d_in, d_out, cfg):
        bad = [f"{what} {d}" for what, d in (("d_in", d_in), ("d_out", d_out)) if d % cfg.vector_length]
        if bad:
            raise ValueError(f"VBLoRAConfig.vector_length: {cfg.vector_length} must divide the layer's d_in and "
                             f"d_out (the sub-vectors tile A's rows and B's columns); module {name!r} has "
                             f"{', '.join(bad)}")

    def param_specs(self, d_in, d_out, r, cfg):
        n, b = cfg.num_vectors, cfg.vector_length
        return {"bank": ParamSpec((n, b)), "logits_A": ParamSpec((r, d_in // b, n)),
                "logits_B": ParamSpec((d_out // b, r, n))}

    def init(self, layer, cfg, gen):
        if self._bank is None:  # first layer: the one bank, drawn once
            self._bank = layer.adapter_bank
            uniform_(self._bank, cfg.init_vector_bank_bound, gen)
        else:
            layer.register_parameter("adapter_bank", self._bank)
        normal_(layer.adapter_logits_A, cfg.init_logits_std, gen)
        normal_(layer.adapter_logits_B, cfg.init_logits_std, gen)

    def forward(self, layer, x, y):
        a, b = factors(layer.adapter_logits_A, layer.adapter_logits_B, layer.adapter_bank, self.cfg.topk)
        return add_lowrank(y, x.to(a.dtype) @ a.t(), b, layer)
