"""PiSSA that does not declare that it overwrites the base weight, so the residual W_res is
missing from the checkpoint (the hand review found this)."""
from audit.mutants import Mutant
from variants.pissa import Pissa


class PissaNoResidual(Pissa):
    mutates_base_weight = False


MUTANT = Mutant("pissa_residual_not_saved", "pissa", "a buffer missing from the checkpoint",
                "W_res is not saved: loading into a fresh model leaves W in place of W_res", ("save_load",),
                PissaNoResidual)
