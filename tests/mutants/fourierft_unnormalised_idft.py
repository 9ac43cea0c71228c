"""FourierFT whose inverse DFT drops the 1/(d_out·d_in) normalisation (torch.fft.ifft2(..., norm="forward"),
or a hand-written Σ e^{+2πi…} without the factor): ΔW is d_out·d_in times too large. The init (c = 0) and the
identity at init stay exact, and ΔW keeps the right spectral support, so only the equation checks see it."""
import torch

from audit.mutants import Mutant
from variants.fourierft import FourierFT, entries
from variants.lora import add_lowrank


class UnnormalisedIdft(FourierFT):
    def forward(self, layer, x, y):
        c = layer.adapter_spectrum
        d_out, d_in = y.shape[-1], x.shape[-1]
        e = entries(d_out, d_in, c.shape[0], self.cfg.random_loc_seed).to(c.device)
        s = torch.zeros(d_out, d_in, dtype=c.dtype, device=c.device).index_put((e[0], e[1]), c)
        dw = torch.fft.ifft2(s, norm="forward").real * self.cfg.scaling
        return add_lowrank(y, x.to(dw.dtype), dw, layer)


MUTANT = Mutant("fourierft_unnormalised_idft", "fourierft", "FFT normalisation missing (unnormalised inverse DFT)",
                "ΔW = α·Re(Σ S e^{+2πi…}) without the 1/(d_out·d_in) of the inverse DFT: identity and init exact, ΔW "
                "d_out·d_in times the paper's", ("paper_parity",), UnnormalisedIdft)
