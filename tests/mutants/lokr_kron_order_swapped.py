"""LoKr with the Kronecker factors swapped: ΔW = γ·kron(W₂, W₁) instead of γ·kron(W₁, W₂)."""
import torch

from audit.mutants import Mutant
from variants.lokr import Lokr


class LokrKronSwapped(Lokr):
    def forward(self, layer, x, y):
        w1, w2 = self.factor(layer, "w1"), self.factor(layer, "w2")
        both_full = hasattr(layer, "adapter_w1") and hasattr(layer, "adapter_w2")
        dw = self.gamma(self.cfg, layer.adapter_rank, both_full) * torch.kron(w2, w1)  # same (d_out, d_in) shape
        return y + (x.to(dw.dtype) @ dw.t()).to(y.dtype)


MUTANT = Mutant("lokr_kron_order_swapped", "lokr", "Kronecker factors in the wrong order",
                "ΔW = γ·kron(W₂, W₁): same shape and still zero at init (identity holds), but the block grid and "
                "the block are exchanged, so every output mixes the wrong inputs", ("paper_parity",), LokrKronSwapped)
