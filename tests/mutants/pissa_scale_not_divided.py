"""PiSSA that forgets to divide S_r by s = alpha/r: A = √S_r V_rᵀ, B = U_r √S_r, W_res = W − s·BA.

W_res is built from the factors, so the forward and identity stay exact for any alpha; only with
alpha ≠ r is s·BA = s·U_r S_r V_rᵀ no longer the principal part (the main config has alpha = r).
"""
import torch

from audit.mutants import Mutant
from variants._tensor_init import top_r_svd
from variants.pissa import Pissa


class PissaNotDivided(Pissa):
    def init(self, layer, cfg, gen):
        s = self.scale(cfg, layer.adapter_rank)
        u, sv, vh = top_r_svd(layer.weight, layer.adapter_rank)
        root = torch.sqrt(sv)
        layer.adapter_A.copy_(root[:, None] * vh)
        layer.adapter_B.copy_(u * root[None, :])
        a, b = layer.adapter_A.to(torch.float64), layer.adapter_B.to(torch.float64)
        layer.weight.copy_(layer.weight.to(torch.float64) - s * (b @ a))


MUTANT = Mutant("pissa_scale_not_divided", "pissa", "config corner: alpha ≠ r",
                "S_r is not divided by s = alpha/r, so s·BA = s·U_r S_r V_rᵀ (alpha = r hides it)",
                ("init",), PissaNotDivided, configs=("alpha-ne-r",), models=("mlp",))
