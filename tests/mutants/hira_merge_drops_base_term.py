"""HiRA whose merge writes W₀ ⊙ (B A) into the layer, forgetting the base term of W₀ ⊙ (1 + B A) (the update
ΔW written where W₀ + ΔW belongs). The unmerged forward, the init and every gradient are right."""
from audit.mutants import Mutant
from variants.hira import Hira


class HiraMergeDropsBase(Hira):
    def merged_weights(self, layer):
        a, b = layer.adapter_A, layer.adapter_B
        w = self.weight(layer)
        return (w.to(b.dtype) * (b @ a)).to(w.dtype), getattr(layer, "bias", None)


MUTANT = Mutant("hira_merge_drops_base_term", "hira", "merge: the base term of W₀ ⊙ (1 + BA) dropped",
                "merge writes W₀ ⊙ BA instead of W₀ + W₀ ⊙ BA; the unmerged layer is exact", ("merge",),
                HiraMergeDropsBase)
