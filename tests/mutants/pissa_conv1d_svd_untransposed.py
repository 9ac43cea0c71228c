"""PiSSA that orients the base weight by its shape: on a square Conv1D (GPT-2's attention c_proj)
it takes the SVD of the stored Wᵀ, so B A holds the top-r part of Wᵀ. The residual written back
into the stored weight is still right (Wᵀ − (W_r)ᵀ), but the adapter adds x·W_r instead of x·W_rᵀ."""
from audit.mutants import Mutant
from variants._layers import features
from variants.pissa import Pissa


class PissaOrientedByShape(Pissa):
    @staticmethod
    def weight(layer):
        d_in, d_out = features(layer)
        w = layer.weight
        return w if tuple(w.shape) == (d_out, d_in) else w.t()


MUTANT = Mutant("pissa_conv1d_svd_untransposed", "pissa", "Conv1D SVD init on the un-transposed weight",
                "the SVD of a square Conv1D's stored weight Wᵀ (oriented by shape), not of W",
                ("init", "identity_at_init"), PissaOrientedByShape, models=("gpt2",))
