"""FourierFT paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): the n trainable spectral coefficients ``spectrum``
(n,). The entry matrix E (2, n) is not state: it is fixed and random, a function of the layer shape and
``random_loc_seed`` (see ``entry_matrix``).
"""

from __future__ import annotations

import torch

from ._common import InitClaim, compute_dtype, f64, linear, normal_pit

EQUATION = "F = ToDense(E, c) (d_out × d_in),  ΔW = α·Re(IDFT2(F)),  h = W₀x + ΔW x,  b unchanged"
CITATION = (
    "Gao, Wang, Chen, Liu, Wu, Chen, Li, Parameter-Efficient Fine-Tuning with Discrete Fourier Transform, "
    "arXiv:2405.03003 (ICML 2024), §3.1 eqs. (2)-(4): F = ToDense(E, c) (2), S = the 2-D inverse DFT of F (3), h = "
    "W₀x + α·Re(S)·x (4), E (2, n) random and shared by the layers, c ~ N(0, 1); and Algorithm 1 (torch.fft.ifft2, "
    "which normalises by 1/(d₁d₂): eq. (3) as printed has no 1/(d₁d₂), a factor α absorbs; E = the first n of "
    "torch.randperm(d₁d₂); c = torch.randn(n)). The placement of E's entries in a (d_out, d_in) ΔW (row idx // d_in, "
    "column idx % d_in) is peft's: Algorithm 1 adds x·ΔW with d₁ the input dimension (the transposed placement for "
    "the same permutation)"
)


def entry_matrix(d_out: int, d_in: int, n: int, seed: int) -> torch.Tensor:
    """E (2, n): the first n of a permutation of the d_out·d_in entries, read row-major (E₀ = idx // d_in,
    E₁ = idx % d_in). Algorithm 1 draws torch.randperm(d₁d₂)[:n] (a square d × d weight); the audited
    implementations seed that permutation with torch.Generator().manual_seed(random_loc_seed), so the
    same seed gives every layer of a shape the same E (the paper's E shared across layers)."""
    idx = torch.randperm(d_out * d_in, generator=torch.Generator().manual_seed(int(seed)))[:n]
    return torch.stack([idx // d_in, idx % d_in])


def delta(W: torch.Tensor, state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = α·Re(IDFT2(F)) (d_out, d_in): F zero but for F[E₀ₗ, E₁ₗ] = cₗ (§3.1 eqs. (2)-(4), Algorithm 1)."""
    d_out, d_in = W.shape
    c = f64(state["spectrum"]).reshape(-1)
    e = entry_matrix(d_out, d_in, c.shape[0], int(cfg.get("random_loc_seed", 777)))
    s = torch.zeros(d_out, d_in, dtype=compute_dtype(), device=c.device).index_put((e[0], e[1]), c)
    return float(cfg.get("scaling", 150.0)) * torch.fft.ifft2(s).real


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + α·Re(IDFT2(ToDense(E, c))), b_eff = b (arXiv:2405.03003 §3.1 eq. (4))."""
    return f64(W) + delta(W, state, cfg), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """spectrum (n,): the trainable coefficients at the entries E."""
    return {"spectrum": (int(cfg.get("n_frequency", 1000)),)}


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """The coefficients' init, by the open choice cfg["init_weights"]: "normal", c ~ N(0, 1) (§3.1: "a normal
    Gaussian distribution"; Algorithm 1: torch.randn(n)); "zeros", c = 0 exactly (ΔW = 0: the base model at init)."""
    c = state["spectrum"].detach()
    if cfg.get("init_weights", "normal") == "zeros":
        return [InitClaim("spectrum_max_abs", "exact", "c = 0 exactly (ΔW = 0 at init)", value=float(c.abs().max()))]
    return [InitClaim("spectrum_normal", "distribution", "Algorithm 1: c ~ N(0, 1) (torch.randn(n))",
                      pit=normal_pit(c, 0.0, 1.0))]
