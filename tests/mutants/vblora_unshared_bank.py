"""VB-LoRA with a bank per layer (each layer draws and trains its own): the forward of each layer is right,
but the bank is no longer the one tensor shared across layers the method is named after."""
from audit.mutants import Mutant
from variants import vblora
from variants._tensor_init import normal_, uniform_


class VBLoRAUnsharedBank(vblora.VBLoRA):
    def init(self, layer, cfg, gen):
        uniform_(layer.adapter_bank, cfg.init_vector_bank_bound, gen)  # every layer keeps its own bank
        normal_(layer.adapter_logits_A, cfg.init_logits_std, gen)
        normal_(layer.adapter_logits_B, cfg.init_logits_std, gen)


MUTANT = Mutant("vblora_unshared_bank", "vblora", "vector bank not shared across layers",
                "each layer draws and trains its own vector bank (right law, right forward) instead of the one "
                "bank shared by every layer", ("properties",), VBLoRAUnsharedBank)
