"""LoRA that re-enables gradients on the base weight it adapts."""
from audit.mutants import Mutant
from variants.lora import Lora


class LoraLeaky(Lora):
    def init(self, layer, cfg, gen):
        super().init(layer, cfg, gen)
        layer.weight.requires_grad_(True)


MUTANT = Mutant("lora_base_grad_leak", "lora", "gradient leaking into a base weight",
                "layer.weight.requires_grad_(True) in init", ("grad_flow",), LoraLeaky)
