"""RandLoRA whose scaled A is flattened basis-major (row j·r + k) instead of rank-major (row k·n + j).

Both look natural: B[:M, :n, :].flatten(1) is basis-major, and a library author who flattens λ ⊙ A ⊙ γ the same
way pairs B's column j·r + k with λ[k, j]·A[k]⊙γ[j]. peft's layout (and the canonical state) flattens it
rank-major, so the same tensors compute another ΔW: a peft checkpoint loads into another function."""

from audit.mutants import Mutant
from variants.lora import add_lowrank
from variants.randlora import RandLora


class RandLoraBasisMajor(RandLora):
    def forward(self, layer, x, y):
        lam, gam = layer.adapter_lambda, layer.adapter_gamma
        r, n = lam.shape
        m = gam.shape[1]
        d_in, d_out = x.shape[-1], y.shape[-1]
        big = max(d_in, d_out)
        a = layer.adapter_A[:, 0, :m]
        b_flat = layer.adapter_B[:big, :n, :].reshape(big, n * r)
        s = self.cfg.alpha / r
        a_flat = (lam.t()[:, :, None] * s * a[None] * gam[:, None, :]).reshape(n * r, m)  # basis-major: j·r + k
        xx = x.to(a.dtype)
        if d_in <= d_out:
            return add_lowrank(y, xx @ a_flat.t(), b_flat, layer)
        return add_lowrank(y, xx @ b_flat, a_flat.t(), layer)


MUTANT = Mutant("randlora_bases_paired_by_basis", "randlora", "a reshape in the wrong memory order",
                "the scaled A flattened basis-major, so B_flat's column j·r + k meets λ[k, j]·A[k]⊙γ[j] instead of the "
                "canonical rank-major pairing: identity and init intact, another ΔW from the same state",
                ("paper_parity",), RandLoraBasisMajor)
