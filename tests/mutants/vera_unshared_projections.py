"""VeRA with a fresh random pair A, B drawn for every layer (LoRA's habit of per-layer factors, frozen)."""
import math

from audit.mutants import Mutant
from variants._tensor_init import uniform_
from variants.vera import Vera


class VeraUnshared(Vera):
    def init(self, layer, cfg, gen):
        a, b = layer.adapter_A, layer.adapter_B
        uniform_(a, math.sqrt(6.0 / a.shape[1]), gen)  # the right Kaiming draw, but the runtime's generator
        uniform_(b, math.sqrt(6.0 / b.shape[1]), gen)  # moves on: every layer gets its own pair
        layer.adapter_lambda_b.zero_()
        layer.adapter_lambda_d.fill_(cfg.d_initial)


MUTANT = Mutant("vera_unshared_projections", "vera", "random projections not shared across layers",
                "each layer draws its own frozen A, B (correct Kaiming law, identity and forward intact) instead of "
                "the one pair VeRA shares over all layers", ("properties",), VeraUnshared)
