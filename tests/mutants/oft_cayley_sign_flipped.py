"""OFT with the Cayley transform's sign flipped: R = (I − Q)(I + Q)⁻¹, the transpose (inverse) of the
paper's (I + Q)(I − Q)⁻¹, as peft's exact branch computes it."""
import torch

from audit.mutants import Mutant
from variants.oft import Oft, skew_blocks


class OftCayleySignFlipped(Oft):
    def forward_input(self, layer, x):
        q = layer.adapter_Q
        if self.cfg.use_cayley_neumann:
            return super().forward_input(layer, x)
        s = skew_blocks(q.float(), self.cfg.block_size)
        eye = torch.eye(self.cfg.block_size, dtype=s.dtype)
        rot = torch.linalg.solve(eye + s, eye - s, left=False)  # X (I + Q) = I − Q
        n, b = rot.shape[0], self.cfg.block_size
        h = x.to(rot.dtype).reshape(*x.shape[:-1], n, b)
        return torch.einsum("...nk,nkc->...nc", h, rot).reshape(x.shape).to(x.dtype)


MUTANT = Mutant("oft_cayley_sign_flipped", "oft", "Cayley transform with the sign flipped (inverse rotation)",
                "exact Cayley R = (I − Q)(I + Q)⁻¹ = Rᵀ instead of (I + Q)(I − Q)⁻¹ (identity, orthogonality and "
                "energy still hold)", ("paper_parity",), OftCayleySignFlipped)
