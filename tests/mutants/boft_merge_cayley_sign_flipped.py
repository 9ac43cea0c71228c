"""BOFT whose merge rebuilds R in closed form with the Cayley sign flipped, (I − Q)(I + Q)⁻¹ per block (the
inverse rotation, as peft's cayley_batch writes it for its own stored sign), while the forward keeps the paper's
(I + Q)(I − Q)⁻¹: the merged layer computes another function than the unmerged one."""
import math

import torch

from audit.mutants import Mutant
from variants.boft import Boft, apply_component, rotations


class BoftMergeCayleySignFlipped(Boft):
    def merged_weights(self, layer):
        q = layer.adapter_Q.detach()
        rot = rotations(-q, math.isqrt(2 * q.shape[-1]) + 1)  # C(−Q) = C(Q)ᵀ: the sign flipped
        w = self.weight(layer)
        h = torch.eye(w.shape[1], dtype=rot.dtype, device=w.device)
        for level in range(q.shape[0] - 1, -1, -1):
            h = apply_component(h, rot[level], level)
        bias = getattr(layer, "bias", None)
        return (w.to(h.dtype) @ h.T).to(w.dtype), None if bias is None else bias.detach().clone()


MUTANT = Mutant("boft_merge_cayley_sign_flipped", "boft", "merge computes another function than the forward",
                "merged_weights rebuilds R with (I − Q)(I + Q)⁻¹ (the inverse rotation); the forward is right",
                ("merge",), BoftMergeCayleySignFlipped)
