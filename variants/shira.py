"""SHiRA, sparse high rank adapters (Bhardwaj, Pandey, Priyadarshi, et al., arXiv 2406.13175, §3.1-3.2).

    W_eff = W + S,   S = scatter(values → positions of a fixed sparse mask M),   y = x W_effᵀ + b

SHiRA trains a small fixed subset of the base weight's entries (§3.1: gradient masking, ∇W ⊙ M, with M a
binary mask of 1-2% ones): what training changes is a sparse matrix S with M's support, the adapter that is
stored, switched and fused (§3.2, rapid switching; App. I: W_new = W + S). Written as an adapter, S holds K trainable
``values`` at the K mask ``indices`` (row, column of the canonical (d_out, d_in) weight); W itself stays frozen.
K = r·(d_in + d_out) (the parameter count of a rank-r LoRA, peft's sizing and the paper's comparison with
LoRA at equal parameters); r bounds the size, not the rank (S is generally full rank).

Mask (``mask_type``): "random" (SHiRA-Rand, §3.1; App. B.2 draws a Bernoulli mask, peft K positions): K distinct
positions drawn uniformly without replacement (``torch.randperm`` of the d_in·d_out positions), from the runtime
generator seeded with ``cfg.seed``, so each layer gets its own mask. The positions are state: a persistent int64
buffer, saved and loaded with the values (a mask regenerated at load from another seed would put trained values
at the wrong weights).
Init: values = 0, so S = 0 and the layer is exactly the base layer; every value gets a gradient at step 0
(∂L/∂S_ij = (∂L/∂y)ᵀ x at (i, j)).

Forward: y + x Sᵀ with S as a CSR sparse matrix: K·tokens multiply-adds (not the d_out·d_in·tokens of a
dense ΔW) and no dense (d_out, d_in) tensor, forward or backward (a custom backward: ∂x through Sᵀ's CSR,
∂values by a sampled product at the mask). The sparse product runs in at least float32 (CPU has no 16-bit
sparse kernel), its result is added in y's dtype.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._inplace import owns_output, recording
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


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def _row_pointers(rows: torch.Tensor, n: int) -> torch.Tensor:
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return crow


def csr_structure(indices: torch.Tensor, d_in: int, d_out: int) -> tuple[torch.Tensor, ...]:
    """What the sparse product needs besides the values, from the positions alone: (order: the positions
    sorted row-major, S's row pointers and columns in that order, perm: that order re-sorted column-major,
    Sᵀ's row pointers and columns)."""
    rows, cols = indices[0].long(), indices[1].long()
    order = torch.argsort(rows * d_in + cols)
    rows, cols = rows[order], cols[order]
    perm = torch.argsort(cols * d_out + rows)
    return order, _row_pointers(rows, d_out), cols, perm, _row_pointers(cols[perm], d_in), rows[perm]


class _SparseProduct(torch.autograd.Function):
    """x ↦ x Sᵀ for S (d_out, d_in) in CSR, differentiable in x and in S's values (row-major order). The
    backward stays sparse: ∂x = g S through Sᵀ's CSR, ∂values = (gᵀ x) sampled at the mask (``sampled_addmm``),
    K·tokens each; torch's own CSR backward forms the dense (d_out, d_in) gᵀx first. Outputs and ∂x are made
    contiguous here: a transposed operand makes the following elementwise add several times slower."""

    @staticmethod
    def forward(ctx, x, values, crow, cols, perm, crow_t, rows_t, d_out):
        ctx.save_for_backward(x, values, crow, cols, perm, crow_t, rows_t)
        ctx.d_out = d_out
        s = _csr(crow, cols, values, (d_out, x.shape[1]))
        return torch.sparse.mm(s, x.to(values.dtype).t()).t().contiguous()

    @staticmethod
    def backward(ctx, g):
        x, values, crow, cols, perm, crow_t, rows_t = ctx.saved_tensors
        d_out, d_in = ctx.d_out, x.shape[1]
        gt = g.t().contiguous()
        gx = gv = None
        if ctx.needs_input_grad[0]:
            st = _csr(crow_t, rows_t, values[perm], (d_in, d_out))
            gx = torch.sparse.mm(st, gt).t().contiguous().to(x.dtype)
        if ctx.needs_input_grad[1]:
            pattern = _csr(crow, cols, torch.zeros_like(values), (d_out, d_in))
            gv = torch.sparse.sampled_addmm(pattern, gt, x.to(values.dtype), beta=0.0).values()
        return gx, gv, None, None, None, None, None, None


def sparse_delta(x: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, d_out: int,
                 structure: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """x Sᵀ (…, d_out), S (d_out, d_in) holding ``values`` at ``indices``, in at least float32 (CPU has no 16-bit
    sparse kernel). A repeated position (never drawn here; a mask is a set) adds, as in the formula and peft.
    ``structure``: ``csr_structure(indices, d_in, d_out)`` when the caller keeps it."""
    d_in = x.shape[-1]
    order, crow, cols, perm, crow_t, rows_t = structure or csr_structure(indices, d_in, d_out)
    ct = torch.promote_types(values.dtype, torch.float32)
    out = _SparseProduct.apply(x.reshape(-1, d_in), values[order].to(ct), crow, cols, perm, crow_t, rows_t, d_out)
    return out.view(*x.shape[:-1], d_out)


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

    @staticmethod
    def structure(layer, d_in: int, d_out: int) -> tuple[torch.Tensor, ...]:
        """``csr_structure`` of the layer's mask, kept on the layer while the mask is that very tensor, unchanged
        (its version counter: any in-place write, a load or a set state, moves it)."""
        idx = layer.adapter_indices
        kept = layer.__dict__.get("_shira_structure")
        if kept is None or kept[0] is not idx or kept[1] != (idx._version, d_in, d_out, idx.device):
            kept = (idx, (idx._version, d_in, d_out, idx.device), csr_structure(idx, d_in, d_out))
            layer.__dict__["_shira_structure"] = kept
        return kept[2]

    def forward(self, layer, x, y):
        d_in, d_out = x.shape[-1], y.shape[-1]
        delta = sparse_delta(x, layer.adapter_indices, layer.adapter_values, d_out,
                             self.structure(layer, d_in, d_out)).to(y.dtype)
        if owns_output(layer, y, recording(y, delta)):  # y is the base layer's fresh output: add into it
            return y.add_(delta)
        return y + delta
