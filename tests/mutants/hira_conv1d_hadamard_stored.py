"""HiRA that takes the Hadamard product with the weight as stored whenever its shape fits (the classic
fan_in_fan_out slip: ``weight * (B @ A)`` without ``transpose(weight, fan_in_fan_out)``). On GPT-2's square
Conv1D projections (attention c_proj, 64 × 64) the stored tensor is W₀ᵀ, so ΔW = W₀ᵀ ⊙ BA; the non-square ones are
oriented by shape and come out right. B = 0 keeps the identity at init and every gradient alive."""
from audit.mutants import Mutant
from variants._layers import features
from variants.hira import Hira
from variants.miss import dense_update


class HiraStoredWeight(Hira):
    def forward(self, layer, x, y):
        a, b = layer.adapter_A, layer.adapter_B
        d_in, d_out = features(layer)
        w = layer.weight if tuple(layer.weight.shape) == (d_out, d_in) else layer.weight.t()
        return dense_update(layer, x, y, w, w.to(b.dtype) * (b @ a))


MUTANT = Mutant("hira_conv1d_hadamard_stored", "hira", "Conv1D Hadamard product with the stored (transposed) weight",
                "W₀ ⊙ BA taken with a square Conv1D's stored W₀ᵀ (oriented by shape), not the canonical W₀",
                ("paper_parity", "peft_parity"), HiraStoredWeight, models=("gpt2",))
