"""LoRA whose rsLoRA scale is alpha / r² instead of alpha / √r (only when use_rslora is on)."""
from audit.mutants import Mutant
from variants.lora import Lora


class LoraRsSquared(Lora):
    @staticmethod
    def scale(cfg, r):
        return cfg.alpha / r ** 2 if cfg.use_rslora else cfg.alpha / r


MUTANT = Mutant("lora_rslora_squared", "lora", "config corner: rsLoRA",
                "s = alpha / r² when use_rslora is on (the default config never turns it on)",
                ("paper_parity",), LoraRsSquared, configs=("rslora",), models=("mlp",))
