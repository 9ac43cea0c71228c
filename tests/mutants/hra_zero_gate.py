"""HRA with a scalar gate initialised to 0: identity holds, but every Householder vector gets an
exactly-zero gradient at init (the bug the hand review found)."""
from audit.mutants import Mutant
from variants import ParamSpec
from variants.hra import Hra


class HraZeroGate(Hra):
    def param_specs(self, d_in, d_out, r, cfg):
        return {**super().param_specs(d_in, d_out, r, cfg), "gate": ParamSpec((1,))}

    def init(self, layer, cfg, gen):
        super().init(layer, cfg, gen)
        layer.adapter_gate.zero_()

    def forward_input(self, layer, x):
        h = super().forward_input(layer, x)
        return x + (layer.adapter_gate * (h - x)).to(x.dtype)


# The gate is a tensor the paper's HRA does not have: the audit's layout pre-check names it before any
# check runs (a subject whose state the paper formula cannot account for is not measured as if it were).
MUTANT = Mutant("hra_zero_gate", "hra", "no gradient at init (gate starts at zero)",
                "x + g·(H x − x) with g = 0: the u vectors get exactly zero gradient; the extra tensor 'gate' "
                "is refused by the layout pre-check", ("layout",), HraZeroGate)
