"""BOFT with its butterfly components multiplied in the wrong order: x B̃(d, 2) ⋯ B̃(d, 2^m) (the block-diagonal
component first) instead of the paper's x B̃(d, 2^m) ⋯ B̃(d, 2) (R = Π_{i=1}^m B̃(d, 2^{m−i+1}), arXiv 2311.06243
§4). Still a product of the same orthogonal components: identity, orthogonality and energy hold."""
import math

from audit.mutants import Mutant
from variants.boft import Boft, apply_component, rotations


class BoftFactorsReversed(Boft):
    def forward_input(self, layer, x):
        q = layer.adapter_Q
        rot = rotations(q, math.isqrt(2 * q.shape[-1]) + 1)
        h = x.to(rot.dtype)
        for level in range(q.shape[0]):  # B̃(d, 2) first: the order reversed
            h = apply_component(h, rot[level], level)
        return h.to(x.dtype)


MUTANT = Mutant("boft_factors_reversed", "boft", "butterfly components multiplied in the wrong order",
                "x B̃(d, 2) ⋯ B̃(d, 2^m) instead of x B̃(d, 2^m) ⋯ B̃(d, 2) (still orthogonal, identity at init)",
                ("paper_parity",), BoftFactorsReversed)
