"""MiSS "bat" (block-affine) that cuts the stored weight into blocks: on transformers' Conv1D the stored
weight is Wᵀ (d_in, d_out), and (d_in, d_out) reshapes into (d_out/r, r, d_in/r, r) without complaint (the
same number of entries), so the blocks W_ij B_i + B_i are built from entries of Wᵀ. nn.Linear is untouched."""
from audit.mutants import Mutant
from variants.lora import add_lowrank
from variants.miss import Miss, bat_delta


class MissBatStoredWeight(Miss):
    def forward(self, layer, x, y):
        if self.cfg.mode != "bat":
            return super().forward(layer, x, y)
        d = layer.adapter_D
        w = layer.weight.reshape(y.shape[-1], x.shape[-1])  # the stored layout, whatever it is
        return add_lowrank(y, x.to(d.dtype), bat_delta(w.to(d.dtype), d), layer)


MUTANT = Mutant("miss_bat_conv1d_untransposed", "miss", "Conv1D block-affine on the un-transposed weight",
                "the bat form builds its blocks from Conv1D's stored Wᵀ reshaped to (d_out, d_in) instead of the "
                "canonical W: identity intact (B = 0), the adapted function wrong on GPT-2",
                ("paper_parity", "properties"), MissBatStoredWeight, models=("gpt2",), configs=("bat",))
