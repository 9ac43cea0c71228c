"""FourierFT that keeps the imaginary part of the inverse DFT instead of the real part (.imag for .real, an easy
slip when the complex result is unpacked): ΔW has the right scale, the right spectral support and is exact at
c = 0, but it is another linear function of c (the sine instead of the cosine of each entry's phase)."""
import torch

from audit.mutants import Mutant
from variants.fourierft import FourierFT, entries
from variants.lora import add_lowrank


class ImaginaryPart(FourierFT):
    def forward(self, layer, x, y):
        c = layer.adapter_spectrum
        d_out, d_in = y.shape[-1], x.shape[-1]
        e = entries(d_out, d_in, c.shape[0], self.cfg.random_loc_seed).to(c.device)
        s = torch.zeros(d_out, d_in, dtype=c.dtype, device=c.device).index_put((e[0], e[1]), c)
        dw = torch.fft.ifft2(s).imag * self.cfg.scaling
        return add_lowrank(y, x.to(dw.dtype), dw, layer)


MUTANT = Mutant("fourierft_imaginary_part", "fourierft", "imaginary part taken for the real part",
                "ΔW = α·Im(IDFT2(S)) instead of α·Re(IDFT2(S)): same scale, support and zero init; another function "
                "of the coefficients", ("paper_parity",), ImaginaryPart)
