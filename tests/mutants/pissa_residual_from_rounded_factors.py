"""PiSSA building W_res from A, B already rounded to bfloat16 while keeping full-precision A, B."""
import torch

from audit.mutants import Mutant
from variants._tensor_init import top_r_svd
from variants.pissa import Pissa


class PissaRoundedResidual(Pissa):
    def init(self, layer, cfg, gen):
        s = self.scale(cfg, layer.adapter_rank)
        u, sv, vh = top_r_svd(layer.weight, layer.adapter_rank)
        root = torch.sqrt(sv / s)
        a, b = root[:, None] * vh, u * root[None, :]
        layer.adapter_A.copy_(a)
        layer.adapter_B.copy_(b)
        a16, b16 = a.to(torch.bfloat16).double(), b.to(torch.bfloat16).double()
        layer.weight.copy_(layer.weight.double() - s * (b16 @ a16))


MUTANT = Mutant("pissa_residual_from_rounded_factors", "pissa", "bf16 residual built from already-rounded factors",
                "W_res = W − s·bf16(B)·bf16(A) while the adapter keeps unrounded A, B", ("identity_at_init",),
                PissaRoundedResidual)
