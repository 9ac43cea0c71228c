"""RandLoRA with fresh random bases A, B drawn for every layer (LoRA's habit of per-layer factors, frozen)."""
import math

import torch

from audit.mutants import Mutant
from variants.randlora import RandLora, draw_bases


class RandLoraUnshared(RandLora):
    def init(self, layer, cfg, gen):
        a, b = layer.adapter_A, layer.adapter_B
        key = int(torch.randint(2 ** 31 - 1, (1,), generator=gen))  # the runtime's generator moves on per layer
        sparsity = math.sqrt(a.shape[2]) if cfg.very_sparse else (3.0 if cfg.sparse else None)
        big_a, big_b = draw_bases(a.shape[0], a.shape[2], b.shape[0], key, sparsity)
        a.copy_(big_a)  # the right law and shapes, but every layer its own pair
        b.copy_(big_b)
        layer.adapter_lambda.zero_()
        layer.adapter_gamma.fill_(1.0 / max(layer.adapter_gamma.shape))


MUTANT = Mutant("randlora_unshared_bases", "randlora", "random projections not shared across layers",
                "each layer draws its own frozen bases A, B (right law, identity and forward intact) instead of the "
                "one pair RandLoRA shares over all layers", ("properties",), RandLoraUnshared)
