"""DoRA normalising the columns (dim 0) instead of the output rows: runs on square layers,
breaks on the non-square k/v projections."""
import torch

from audit.mutants import Mutant
from variants.dora import Dora


class DoraColumnNorm(Dora):
    def forward(self, layer, x, y):
        a, b, m = layer.adapter_A, layer.adapter_B, layer.adapter_m
        s = self.scale(self.cfg, layer.adapter_rank)
        with torch.no_grad():
            n = (layer.weight.to(a.dtype) + s * (b @ a)).norm(dim=0)
        mag = m / n
        base = y if layer.bias is None else y - layer.bias
        delta = (mag - 1) * base.to(a.dtype) + mag * (s * ((x.to(a.dtype) @ a.t()) @ b.t()))
        return y + delta.to(y.dtype)


MUTANT = Mutant("dora_norm_wrong_axis", "dora", "norm on the wrong axis of a non-square weight",
                "‖V‖ over dim 0 (input columns) instead of dim 1 (output rows)", ("identity_at_init", "paper_parity"),
                DoraColumnNorm)
