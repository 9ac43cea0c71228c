"""LoKr's fast path reading the input block in column-major order: X = x.reshape(…, in_n, in_m)ᵀ."""
import torch

from audit.mutants import Mutant
from variants.lokr import Lokr


class LokrInputColumnMajor(Lokr):
    def forward(self, layer, x, y):
        w1, w2 = self.factor(layer, "w1"), self.factor(layer, "w2")
        both_full = hasattr(layer, "adapter_w1") and hasattr(layer, "adapter_w2")
        g = self.gamma(self.cfg, layer.adapter_rank, both_full)
        h = x.to(w2.dtype).reshape(*x.shape[:-1], w2.shape[1], w1.shape[1]).transpose(-1, -2)  # the bug
        h = torch.matmul(w1, h @ w2.t())
        return y + (g * h).reshape(*x.shape[:-1], w1.shape[0] * w2.shape[0]).to(y.dtype)


MUTANT = Mutant("lokr_input_unflattened_wrong_order", "lokr", "a reshape in the wrong memory order",
                "x unflattened to (in_n, in_m) and transposed instead of reshaped to (in_m, in_n): the input columns are "
                "shuffled, so ΔW is W₁ ⊗ W₂ with permuted columns, a Kronecker product in neither order; still zero "
                "at init", ("paper_parity",), LokrInputColumnMajor)
