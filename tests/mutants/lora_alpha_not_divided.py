"""LoRA scaled by alpha instead of alpha / r."""
from audit.mutants import Mutant
from variants.lora import Lora


class LoraAlphaScale(Lora):
    @staticmethod
    def scale(cfg, r):
        return cfg.alpha


MUTANT = Mutant("lora_alpha_not_divided", "lora", "wrong scaling (alpha vs alpha/r)",
                "s = alpha instead of alpha / r", ("paper_parity",), LoraAlphaScale)
