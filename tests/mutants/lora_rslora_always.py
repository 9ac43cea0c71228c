"""LoRA that always uses the rsLoRA scale alpha/√r, even with use_rslora=False."""
import math

from audit.mutants import Mutant
from variants.lora import Lora


class LoraAlwaysRs(Lora):
    @staticmethod
    def scale(cfg, r):
        return cfg.alpha / math.sqrt(r)


MUTANT = Mutant("lora_rslora_always", "lora", "wrong scaling (rsLoRA)",
                "s = alpha / √r although use_rslora is False", ("paper_parity",), LoraAlwaysRs)
