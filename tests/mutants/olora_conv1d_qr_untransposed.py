"""OLoRA that orients the base weight by its shape, as peft's olora_init does on Conv1D (it QRs
``weight.data`` as stored, peft/tuners/lora/layer.py:400-401): on a square Conv1D (GPT-2's attention
c_proj) the QR is of the stored Wᵀ, so B A = Q_r R_r approximates Wᵀ. The residual written back into
the stored weight is Wᵀ − s·Q_rR_r, but the adapter adds s·x (Q_rR_r)ᵀ: the layer is no longer W at init."""
from audit.mutants import Mutant
from variants._layers import features
from variants.olora import Olora


class OloraOrientedByShape(Olora):
    @staticmethod
    def weight(layer):
        d_in, d_out = features(layer)
        w = layer.weight
        return w if tuple(w.shape) == (d_out, d_in) else w.t()


MUTANT = Mutant("olora_conv1d_qr_untransposed", "olora", "Conv1D QR init on the un-transposed weight",
                "the QR of a square Conv1D's stored weight Wᵀ (oriented by shape, as peft's olora_init), not of W",
                ("init", "identity_at_init"), OloraOrientedByShape, models=("gpt2",))
