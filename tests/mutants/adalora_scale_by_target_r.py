"""AdaLoRA scaled by alpha / target_r instead of alpha / init_r.

loralib's ``ranknum`` ("the current rank") invites dividing by the rank the budget is heading for; the
authors fix it at init_r for the whole run (masking λ never changes the scale). With target_r = 2 and
init_r = 4 (the main config) every output and gradient of the adapter is twice too large.
"""
from audit.mutants import Mutant
from variants.adalora import Adalora


class AdaloraScaleByTargetR(Adalora):
    @staticmethod
    def scale(cfg, r):
        return cfg.alpha / cfg.target_r


MUTANT = Mutant("adalora_scale_by_target_r", "adalora", "wrong scaling (alpha/target_r vs alpha/init_r)",
                "s = alpha / target_r instead of alpha / init_r (ranknum taken as the final rank)",
                ("paper_parity",), AdaloraScaleByTargetR)
