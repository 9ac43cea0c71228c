"""IA3 placed on q/v (peft's qwen default) instead of the paper's k/v."""
from audit.mutants import Mutant
from variants.ia3 import Ia3


class Ia3QV(Ia3):
    default_roles = ("q", "v")


MUTANT = Mutant("ia3_on_q_v", "ia3", "adapter placed on the wrong projections",
                "default targets q_proj, v_proj instead of k_proj, v_proj", ("placement",), Ia3QV)
