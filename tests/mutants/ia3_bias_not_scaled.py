"""IA3 scaling x Wᵀ but not the bias (the paper scales the whole key/value, bias included)."""
from audit.mutants import Mutant
from variants.ia3 import Ia3


class Ia3BiasUnscaled(Ia3):
    def forward(self, layer, x, y):
        lv = layer.adapter_l
        b = 0 if layer.bias is None else layer.bias
        return ((y - b).to(lv.dtype) * lv).to(y.dtype) + b


MUTANT = Mutant("ia3_bias_not_scaled", "ia3", "bias handled wrongly (not scaled where it must be)",
                "(x Wᵀ) ⊙ l + b instead of (x Wᵀ + b) ⊙ l", ("paper_parity",), Ia3BiasUnscaled)
