"""DoRA that orients the base weight by its shape ("transpose it if it is not (d_out, d_in)"): right
on every nn.Linear and every non-square Conv1D, but a square Conv1D (GPT-2's attention c_proj)
stores Wᵀ with the same shape, so m and the forward's norm are taken over the wrong axis (input
columns). Both use the same wrong norm, so m / ‖W‖ = 1 and the model is exactly the base at init."""
from audit.mutants import Mutant
from variants._layers import features
from variants.dora import Dora


class DoraOrientedByShape(Dora):
    @staticmethod
    def weight(layer):
        d_in, d_out = features(layer)
        w = layer.weight
        return w if tuple(w.shape) == (d_out, d_in) else w.t()


MUTANT = Mutant("dora_conv1d_norm_by_shape", "dora", "Conv1D norm on the wrong axis",
                "the Conv1D weight oriented by its shape: on a square Conv1D, ‖W‖ per input column instead of per "
                "output row (m and the forward alike, so identity at init holds)", ("init", "paper_parity"),
                DoraOrientedByShape, models=("gpt2",))
