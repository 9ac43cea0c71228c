"""HRA applying the reflections in reverse order (H_0 first on the input)."""
from audit.mutants import Mutant
from variants.hra import Hra


class HraReversed(Hra):
    def forward_input(self, layer, x):
        u = layer.adapter_u
        unit = u / u.norm(dim=1, keepdim=True)
        h = x.to(u.dtype)
        for i in range(unit.shape[0]):
            h = h - 2 * (h @ unit[i])[..., None] * unit[i]
        return h.to(x.dtype)


MUTANT = Mutant("hra_reverse_order", "hra", "reflections applied in reverse order",
                "x·H_0⋯H_{r−1} instead of x·H_{r−1}⋯H_0 (identity still holds: pairs cancel either way)",
                ("paper_parity",), HraReversed)
