"""SHiRA, sparse high rank adapters (Bhardwaj, Pandey, Priyadarshi, et al., arXiv 2406.13175, §3).

    W_eff = W + S,   S = scatter(values → positions of a fixed sparse mask M),   y = x W_effᵀ + b

SHiRA trains a small fixed subset of the base weight's entries (§3: gradient masking, ∇W ⊙ M, with M a
binary mask of 1-2% ones): what training changes is a sparse matrix S with M's support, the adapter that is
stored, switched and fused (§3, rapid switching: W_new = W + S). Written as an adapter, S holds K trainable
``values`` at the K mask ``indices`` (row, column of the canonical (d_out, d_in) weight); W itself stays frozen.
K = r·(d_in + d_out) (the parameter count of a rank-r LoRA, peft's sizing and the paper's comparison with
LoRA at equal parameters); r bounds the size, not the rank (S is generally full rank).

Mask (``mask_type``): "random" (SHiRA-Rand, §3): K distinct positions drawn uniformly without replacement
(``torch.randperm`` of the d_in·d_out positions), from the runtime generator seeded with ``cfg.seed``, so each
layer gets its own mask. The positions are state: a persistent int64 buffer, saved and loaded with the
values (a mask regenerated at load from another seed would put trained values at the wrong weights).
Init: values = 0, so S = 0 and the layer is exactly the base layer; every value gets a gradient at step 0
(∂L/∂S_ij = (∂L/∂y)ᵀ x at (i, j)).

Forward: y + x Sᵀ with S as a CSR sparse matrix: K·tokens multiply-adds (not the d_out·d_in·tokens of a
dense ΔW) and no dense (d_out, d_in) tensor, forward or backward. The sparse product runs in at least
float32 (CPU has no 16-bit sparse kernel), its result is added in y's dtype.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is

MASK_TYPES = ("random",)

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass(frozen=True)
class ShiraConfig(AdapterConfig):
    """r: the mask holds r·(d_in + d_out) positions per layer (peft's default r = 32); mask_type: how they are
    chosen ("random": SHiRA-Rand, seeded by ``seed``). alpha is not used (S is added unscaled)."""

    variant = "shira"
    unused = ("alpha",)
    r: int = 32
    mask_type: str = "random"

    def check(self):
        if self.mask_type not in MASK_TYPES:
            raise self.fail("mask_type", f"must be one of {MASK_TYPES} (SHiRA-Rand; the paper's structured and "
                                         f"data-driven masks are not implemented here), got {self.mask_type!r}")


def mask_size(d_in: int, d_out: int, r: int) -> int:
    """K = r·(d_in + d_out): the number of trainable entries (peft's ShiraLayer.update_layer)."""
    return r * (d_in + d_out)


def random_positions(d_in: int, d_out: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(2, K) int64 (row, column) of K distinct positions of a (d_out, d_in) matrix, uniform without
    replacement, sorted row-major."""
    flat = torch.randperm(d_in * d_out, generator=gen)[:k].sort().values
    return torch.stack((flat // d_in, flat % d_in))


def sparse_delta(x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, d_out: int) -> torch.Tensor:
    """x Sᵀ (…, d_out), S (d_out, d_in) holding ``values`` at ``indices``, in at least float32. The positions must be
    distinct (a mask is a set): the backward of torch's CSR constructor refuses a repeated one."""
    d_in = x.shape[-1]
    rows, cols = indices[0].long(), indices[1].long()
    order = torch.argsort(rows * d_in + cols)  # CSR: row-major order (any stored order is accepted)
    rows, cols = rows[order], cols[order]
    ct = torch.promote_types(values.dtype, torch.float32)
    crow = torch.zeros(d_out + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=d_out).cumsum(0)
    s = torch.sparse_csr_tensor(crow, cols, values[order].to(ct), (d_out, d_in), check_invariants=False)
    flat = x.reshape(-1, d_in).to(ct)
    return torch.sparse.mm(s, flat.t()).t().reshape(*x.shape[:-1], d_out)


class Shira(Variant):
    name = "shira"
    Config = ShiraConfig
    # peft's ShiraConfig: shira_weight (K,) and shira_indices (2, K) int32 per layer; the mask fixed by the file
    peft_format = PeftFormat(
        peft_type="SHIRA", claims=peft_type_is("SHIRA"),
        tensors={"values": "shira_weight", "indices": "shira_indices"}, transforms={"indices": "int32"},
        to_config=lambda cfg, st: {"r": cfg.r, "mask_type": cfg.mask_type, "random_seed": cfg.seed,
                                   "init_weights": True},
        from_config=lambda pcfg, shapes: {"r": int(pcfg.get("r", 32)), "mask_type": str(pcfg.get("mask_type", "random")),
                                          "seed": int(pcfg.get("random_seed") or 0)},
        reads=("r", "mask_type", "random_seed"), inert=("init_weights",))

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if mask_size(d_in, d_out, cfg.r) > d_in * d_out:
            raise self.rank_error(cfg, name, (d_in * d_out) // (d_in + d_out),
                                  f"r·(d_in + d_out) = {mask_size(d_in, d_out, cfg.r)} positions exceed the "
                                  f"{d_in}×{d_out} weight's {d_in * d_out} entries")

    def param_specs(self, d_in, d_out, r, cfg):
        k = mask_size(d_in, d_out, r)
        return {"values": ParamSpec((k,)), "indices": ParamSpec((2, k), trainable=False, dtype=torch.int64)}

    def init(self, layer, cfg, gen):
        d_out, d_in = self.weight(layer).shape
        idx = layer.adapter_indices
        idx.copy_(random_positions(d_in, d_out, idx.shape[1], gen).to(idx.device))
        layer.adapter_values.zero_()

    def forward(self, layer, x, y):
        return y + sparse_delta(x, layer.adapter_indices, layer.adapter_values, y.shape[-1]).to(y.dtype)
