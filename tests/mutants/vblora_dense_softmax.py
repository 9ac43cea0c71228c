"""VB-LoRA with the softmax over ALL of a sub-vector's logits instead of its top-k (the dense admixture the
top-k module replaces): the weights of the chosen rows shrink and every other bank row leaks in."""
import torch

from audit.mutants import Mutant
from variants import vblora
from variants.lora import add_lowrank


def _dense(logits, bank):
    return torch.softmax(logits, dim=-1) @ bank


class VBLoRADenseSoftmax(vblora.VBLoRA):
    def forward(self, layer, x, y):
        la, lb, bank = layer.adapter_logits_A, layer.adapter_logits_B, layer.adapter_bank
        r = la.shape[0]
        a = _dense(la, bank).reshape(r, -1)
        b = _dense(lb, bank).permute(0, 2, 1).reshape(-1, r)
        return add_lowrank(y, x.to(a.dtype) @ a.t(), b, layer)


MUTANT = Mutant("vblora_dense_softmax", "vblora", "softmax over every logit instead of the top-k",
                "each sub-vector mixes the whole bank by a softmax over all its logits (top-k selection "
                "dropped): init law and sharing intact, the function differs", ("paper_parity",), VBLoRADenseSoftmax)
