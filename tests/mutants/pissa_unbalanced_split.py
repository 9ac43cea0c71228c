"""PiSSA that puts all of S on B: A = V_rᵀ, B = U_r diag(S_r)/s, W_res = W − s·BA.

s·BA = U_r S_r V_rᵀ and W_res are right, so the forward and identity are exact; but the factors
are not the paper's balanced √S split, so the gradients at init (and the whole training) differ.
"""
import torch

from audit.mutants import Mutant
from variants._tensor_init import top_r_svd
from variants.pissa import Pissa


class PissaUnbalanced(Pissa):
    def init(self, layer, cfg, gen):
        s = self.scale(cfg, layer.adapter_rank)
        u, sv, vh = top_r_svd(layer.weight, layer.adapter_rank)
        layer.adapter_A.copy_(vh)
        layer.adapter_B.copy_(u * (sv / s)[None, :])
        a, b = layer.adapter_A.to(torch.float64), layer.adapter_B.to(torch.float64)
        layer.weight.copy_(layer.weight.to(torch.float64) - s * (b @ a))


MUTANT = Mutant("pissa_unbalanced_split", "pissa", "init split unbalanced between the factors",
                "A = V_rᵀ and B = U_r S_r / s: the product is right, the split is not the paper's √S on each",
                ("init",), PissaUnbalanced)
