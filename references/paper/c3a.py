"""C3A paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): ``kernel`` (d_out/b, d_in/b, b), the circular
convolution kernels of the b × b blocks of ΔW (block (i, j) built from kernel[i, j]).

Gradients are autograd's of this forward. The paper's §3.3 writes ∂L/∂x = C(Δw)·∂L/∂Δz (no transpose) and its
Algorithm A1 backward computes x_grad = FFT(FFT(G) ∘ iFFT(w)).real, the line peft's BlockCircularConvolution
carries (audit/cards/c3a.py _BWD_REASON); neither equals C(Δw)ᵀ·∂L/∂Δz for b ≥ 3. The kernel gradient
(FFT(FFT(G) ∘ iFFT(x)).real) is right.
"""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, compute_dtype, f64, linear, normal_pit, uniform_pit

EQUATION = ("ΔW = s·C_blk(w): block (i, j) = C(w_ij), C(v)[l, k] = v[(k − l) mod b] (rows the cyclic shifts of v);  "
            "s = 1/d_in (peft) or 1;  h = W₀x + ΔW x,  b unchanged")
CITATION = (
    "Chen, Cheng, Liu, Gao, Tsung, Li, Li, Parameter-Efficient Fine-Tuning via Circular Convolution, "
    "arXiv:2407.19342 (Findings of ACL 2025), §3.2 (Δz = Δw ⋆ x = C(Δw)x, the circulant C(Δw) whose first row is Δw "
    "and each next row the one above shifted right by one: C[l, k] = Δw[(k − l) mod d]; eq. (1) Δw ⋆ x = FFT(FFT(Δw) "
    "∘ iFFT(x)), no normalising factor) and §3.4 eqs. (3)-(4) (block-circular: Δz = C_blk(Δw)x, block (i, j) = "
    "C(Δw_ij), b dividing d₁ = d_out and d₂ = d_in); Appendix A Algorithm A1 (kernel w (m, n, b)). The paper calls "
    "C(Δw)x a convolution; with rows shifted right it is, index-wise, the circular cross-correlation Σ_k Δw[(k − l) "
    "mod d]·x_k, which eq. (1) computes. The 1/d_in normalisation is that of the authors' integration in peft "
    "(tuners/c3a/layer.py); the paper has none (references the option kernel_scale)"
)


def circulant_blocks(w: torch.Tensor) -> torch.Tensor:
    """C_blk(w) (m·b, n·b) from w (m, n, b), written out entry by entry: [i·b + l, j·b + k] = w[i, j, (k − l) mod b]."""
    m, n, b = w.shape
    shift = (torch.arange(b)[None, :] - torch.arange(b)[:, None]) % b  # [l, k] -> (k − l) mod b
    return w[:, :, shift].permute(0, 2, 1, 3).reshape(m * b, n * b)


def scale(d_in: int, cfg: dict) -> float:
    """The kernel's scale: 1/d_in (peft's forward and merge) or 1 (ΔW = C_blk(Δw) as §3.4 eq. (3) writes it)."""
    return 1.0 / d_in if cfg.get("kernel_scale", "1/d_in") == "1/d_in" else 1.0


def delta(W: torch.Tensor, state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = s·C_blk(w) (d_out, d_in), §3.4 eq. (4)."""
    d_out, d_in = W.shape
    w = f64(state["kernel"])
    if w.dim() != 3 or w.shape[0] * w.shape[2] != d_out or w.shape[1] * w.shape[2] != d_in:
        raise ValueError(f"kernel {tuple(w.shape)} does not tile a ({d_out}, {d_in}) weight into b × b blocks")
    return scale(d_in, cfg) * circulant_blocks(w)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + s·C_blk(w), b_eff = b (arXiv:2407.19342 §3.4 eq. (3))."""
    return f64(W) + delta(W, state, cfg).to(compute_dtype()), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """kernel (d_out/b, d_in/b, b)."""
    bs = int(cfg.get("block_size", 256))
    return {"kernel": (d_out // bs, d_in // bs, bs)}


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """The kernel's init, by the open choice cfg["init_weights"] (peft's options; the paper's §3 fixes none, its
    hyperparameter tables A4-A5 list "C3A Initialization: Xavier Uniform" for GLUE and ViT):
    "zeros" w = 0 exactly (ΔW = 0); "xavier_uniform" U(±√(6/(d_in + d_out))); "kaiming_uniform" U(±√(1/d_in));
    "gaussian" N(0, 1)."""
    w = state["kernel"].detach()
    d_out, d_in = W.shape
    how = cfg.get("init_weights", "xavier_uniform")
    if how == "zeros":
        return [InitClaim("kernel_max_abs", "exact", "w = 0 exactly (ΔW = 0 at init)", value=float(w.abs().max()))]
    if how == "gaussian":
        return [InitClaim("kernel_normal", "distribution", "w ~ N(0, 1)", pit=normal_pit(w, 0.0, 1.0))]
    bound = math.sqrt(1.0 / d_in) if how == "kaiming_uniform" else math.sqrt(6.0 / (d_in + d_out))
    return [InitClaim(f"kernel_{how}", "distribution", f"w ~ U(±{bound:.4g}) ({how}, the layer's fans)",
                      pit=uniform_pit(w, bound))]
