"""DeLoRA with λ initialised to 0: the scale kills every gradient (A, B and λ stay dead)."""
from audit.mutants import Mutant
from variants.delora import Delora


class DeloraLambdaZero(Delora):
    def init(self, layer, cfg, gen):
        super().init(layer, cfg, gen)
        layer.adapter_lam.zero_()


MUTANT = Mutant("delora_lambda_zero", "delora", "scale of zero kills every gradient",
                "λ₀ = 0 instead of lambda0: ΔW ≡ 0 and A, B get zero gradient", ("grad_flow",), DeloraLambdaZero)
