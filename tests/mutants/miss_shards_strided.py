"""MiSS whose shard sum reshapes the input the wrong way round: x viewed as (r, d_in/r) and summed over the
last axis, so "shard" k gathers the strided entries k·d_in/r … (k+1)·d_in/r − 1 … instead of the r-wide
contiguous slice x_[k]. Same shapes, same zero init (identity intact); every entry of D still trains."""
from audit.mutants import Mutant
from variants.lora import add_lowrank
from variants.miss import Miss


class MissStrided(Miss):
    def forward(self, layer, x, y):
        d = layer.adapter_D
        r = d.shape[0]
        h = x.to(d.dtype).unflatten(-1, (r, x.shape[-1] // r)).sum(-1)  # wrong memory order
        return add_lowrank(y, h, d.t(), layer)


MUTANT = Mutant("miss_shards_strided", "miss", "a reshape in the wrong memory order",
                "the d_in/r shards are summed from a (r, d_in/r) view (strided entries) instead of (d_in/r, r) "
                "(contiguous r-wide slices): identity and gradient flow intact, ΔW's columns permuted",
                ("paper_parity", "peft_parity", "properties"), MissStrided)
