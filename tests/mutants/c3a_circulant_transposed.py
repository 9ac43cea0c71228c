"""C3A whose blocks are the transposed circulants: kernel[i, j] as the first COLUMN of block (i, j) (the
convolution w ⋆ x, irfft(V ⊙ X)) instead of its first row (§3's C(Δw), rows the cyclic shifts of Δw). Each
block is still a circulant with the same entries, ΔW has the same norm and the zero init is exact, so identity,
init and the circulant property hold; only the equation checks see the mirrored kernels."""
import torch

from audit.mutants import Mutant
from variants.c3a import C3A


class TransposedCirculant(C3A):
    def forward(self, layer, x, y):
        w = layer.adapter_kernel
        m, n, b = w.shape
        d_in = x.shape[-1]
        xs = torch.fft.rfft(x.reshape(-1, n, b).to(w.dtype), dim=-1)
        out = torch.einsum("tjf,ijf->tif", xs, torch.fft.rfft(w, dim=-1))  # V ⊙ X: convolution, not correlation
        h = torch.fft.irfft(out, n=b, dim=-1).reshape(*y.shape) / d_in
        return y + h.to(y.dtype)

    def merged_weights(self, layer):
        return super(C3A, self).merged_weights(layer)  # read off the (mutated) forward


MUTANT = Mutant("c3a_circulant_transposed", "c3a", "circulant transposed (first column for first row)",
                "each block C(w)ᵀ (w as the first column: a convolution) instead of C(w) (w as the first row): "
                "identity, init and circulant structure intact", ("paper_parity",), TransposedCirculant)
