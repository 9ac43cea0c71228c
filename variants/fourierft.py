"""FourierFT, fine-tuning in the Fourier domain (Gao et al., arXiv 2405.03003, §3.1, Algorithm 1).

    S = ToDense(E, c) (d_out, d_in):  S[E₀ₗ, E₁ₗ] = cₗ, 0 elsewhere;   ΔW = α·Re(IDFT2(S));   h = W₀x + ΔW x

IDFT2 is the normalised inverse 2-D DFT (torch.fft.ifft2: the 1/(d_out·d_in) factor included, as the
paper's Algorithm 1). Only the n spectral coefficients c train. The entry matrix E (2, n) is fixed and
random: the first n of a seeded permutation of the d_out·d_in entries, flattened row-major
(E₀ = idx // d_in, E₁ = idx % d_in), from torch.Generator().manual_seed(random_loc_seed) — the stream
peft draws, so one seed gives one E per layer shape (shared by every layer of that shape, §3.1). E is
regenerated from the seed, not saved: the checkpoint holds c alone (peft saves only the spectrum too).
Init (open in the paper): "normal" c ~ N(0, 1) (Algorithm 1, peft's default init_weights=False; ΔW ≠ 0
at init), or "zeros" (peft's init_weights=True; the identity at init).

Forward: Re(IDFT2(S)) = IDFT2(H) with H = (S + S̃)/2, S̃[j, k] = S[−j, −k] (Hermitian and real), so the
real ΔW comes from irfft2 of H's half spectrum: half the complex work and memory of ifft2 followed by
.real, and α is folded into the n coefficients rather than into the dense d_out × d_in matrix. The
backward (``SpectralDelta``) is one rfft2 of ∂L/∂ΔW read at the entries, and keeps no tensor from the forward.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, conv1d_targets, peft_type_is
from ._tensor_init import normal_
from .lora import add_lowrank


@dataclass(frozen=True)
class FourierFTConfig(AdapterConfig):
    """n_frequency n (coefficients per layer, ≤ d_in·d_out), scaling α, random_loc_seed (the entry
    matrix's seed), init_weights "normal" (N(0, 1), the paper's) or "zeros" (identity at init).
    r and alpha are not read."""

    variant = "fourierft"
    unused = ("r", "alpha")
    n_frequency: int = 1000
    scaling: float = 150.0
    random_loc_seed: int = 777
    init_weights: Literal["normal", "zeros"] = "normal"

    def check(self):
        if self.n_frequency <= 0:
            raise self.fail("n_frequency", f"must be a positive integer, got {self.n_frequency}")
        if not math.isfinite(self.scaling):
            raise self.fail("scaling", f"must be finite, got {self.scaling}")


@functools.lru_cache(maxsize=64)
def entries(d_out: int, d_in: int, n: int, seed: int) -> torch.Tensor:
    """E (2, n) int64 on CPU: rows E₀ = idx // d_in, columns E₁ = idx % d_in of the first n entries of
    torch.randperm(d_out·d_in) drawn from torch.Generator().manual_seed(seed)."""
    idx = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([idx // d_in, idx % d_in])


@functools.lru_cache(maxsize=64)
def _half_spectrum_index(d_out: int, d_in: int, n: int, seed: int, device: torch.device):
    """(flat index into the (d_out, d_in//2+1) half spectrum, which coefficient lands there) for the
    entries of H = (S + S̃)/2 that irfft2 reads: each E and its mirror (−E₀, −E₁), where its column
    is ≤ d_in//2. Each carries c/2 (accumulated: a self-mirrored entry gets c); and, per coefficient,
    the flat half-spectrum index where Re(rfft2(G)) holds its gradient (E, or its mirror when E₁ > d_in//2:
    the DFT of a real matrix is Hermitian, so both have the same real part)."""
    e0, e1 = entries(d_out, d_in, n, seed)
    half = d_in // 2 + 1
    rows = torch.cat([e0, (-e0) % d_out])
    cols = torch.cat([e1, (-e1) % d_in])
    which = torch.cat([torch.arange(n), torch.arange(n)])
    keep = cols < half
    own = torch.where(e1 < half, e0 * half + e1, ((-e0) % d_out) * half + (-e1) % d_in)
    return (rows[keep] * half + cols[keep]).to(device), which[keep].to(device), own.to(device)


class SpectralDelta(torch.autograd.Function):
    """c -> ΔW = α·Re(IDFT2(ToDense(E, c))) (d_out, d_in). Nothing is saved for the backward but the entry
    indices: ∂L/∂cₗ = α·Re(IDFT2ᴴ G)[Eₗ] = α/(d_out·d_in)·Re(DFT2(G))[Eₗ], read off the half spectrum rfft2(G)."""

    @staticmethod
    def forward(ctx, c, d_out, d_in, seed, scaling):
        flat, which, own = _half_spectrum_index(d_out, d_in, c.shape[0], seed, c.device)
        half = d_in // 2 + 1
        cplx = torch.complex128 if c.dtype == torch.float64 else torch.complex64
        h = torch.zeros(d_out * half, dtype=cplx, device=c.device)
        h.index_add_(0, flat, (c * (0.5 * scaling))[which].to(cplx))
        ctx.own, ctx.scale = own, scaling / (d_out * d_in)
        return torch.fft.irfft2(h.view(d_out, half), s=(d_out, d_in))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        spec = torch.view_as_real(torch.fft.rfft2(g)).flatten(0, 1)[..., 0]  # Re(rfft2(G)), flat (d_out·half,)
        return spec[ctx.own] * ctx.scale, None, None, None, None


def delta_weight(c: torch.Tensor, d_out: int, d_in: int, seed: int, scaling: float) -> torch.Tensor:
    """ΔW = α·Re(IDFT2(ToDense(E, c))) (d_out, d_in), in c's dtype (float32 at least: no bf16 FFT)."""
    dt = c.dtype if c.dtype in (torch.float32, torch.float64) else torch.float32
    return SpectralDelta.apply(c.to(dt), d_out, d_in, seed, float(scaling))


class FourierFT(Variant):
    name = "fourierft"
    Config = FourierFTConfig
    # peft's FourierFTConfig: per layer only fourierft_spectrum (n,); the entries are redrawn from
    # random_loc_seed (peft's FourierFTLayer.indices is a plain dict, not saved)
    peft_format = PeftFormat(
        peft_type="FOURIERFT", claims=peft_type_is("FOURIERFT"), tensors={"spectrum": "fourierft_spectrum"},
        to_config=lambda cfg, st: {"n_frequency": cfg.n_frequency, "scaling": cfg.scaling,
                                   "random_loc_seed": cfg.random_loc_seed, "init_weights": cfg.init_weights == "zeros",
                                   "bias": "none", "n_frequency_pattern": {}, "fan_in_fan_out": conv1d_targets(st)},
        from_config=lambda pcfg, shapes: {"n_frequency": int(pcfg.get("n_frequency", 1000)),
                                          "scaling": float(pcfg.get("scaling", 150.0)),
                                          "random_loc_seed": int(pcfg.get("random_loc_seed", 777)),
                                          "init_weights": "zeros" if pcfg.get("init_weights") else "normal"},
        reads=("n_frequency", "scaling", "random_loc_seed", "init_weights"),
        fixed={"bias": ("none",), "n_frequency_pattern": ({}, None)}, conv1d=None)

    def param_specs(self, d_in, d_out, r, cfg):
        return {"spectrum": ParamSpec((cfg.n_frequency,))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.n_frequency > d_in * d_out:
            raise ValueError(f"{type(cfg).__name__}.n_frequency: n_frequency={cfg.n_frequency} exceeds the "
                             f"{d_out}×{d_in} = {d_in * d_out} spectral entries of module {name!r}")

    def init(self, layer, cfg, gen):
        c = layer.adapter_spectrum
        if cfg.init_weights == "zeros":
            c.zero_()
        else:
            normal_(c, 1.0, gen)

    def forward(self, layer, x, y):
        c = layer.adapter_spectrum
        d_in = x.shape[-1]
        dw = delta_weight(c, y.shape[-1], d_in, self.cfg.random_loc_seed, self.cfg.scaling)
        # out of place (no ``layer``): the in-place baddbmm_ into y keeps one (tokens × d_out) buffer more at the
        # backward's peak than addmm here (measured on the bench model: 153 MB vs 148 MB; peft 150 MB)
        return add_lowrank(y, x.to(dw.dtype), dw)
