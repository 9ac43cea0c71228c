"""LoRA with B drawn at random (peft's init_lora_weights=False): not the identity at init."""
from audit.mutants import Mutant
from variants._tensor_init import kaiming_uniform_
from variants.lora import Lora


class LoraRandomB(Lora):
    def init(self, layer, cfg, gen):
        kaiming_uniform_(layer.adapter_A, gen)
        kaiming_uniform_(layer.adapter_B, gen)


MUTANT = Mutant("lora_random_b", "lora", "identity broken at init",
                "B kaiming-initialised instead of 0", ("identity_at_init",), LoraRandomB)
