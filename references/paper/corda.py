"""CorDA paper formula (float64). The layer weight W passed to ``merged`` is the mutated residual W_res."""

from __future__ import annotations

import torch

from ._common import InitClaim, compute_dtype, f64, linear, lowrank_scaling, rel_max

EQUATION = ("W C = U Σ Vᵀ;  W = U Σ (Vᵀ C⁻¹);  s·BA = U_I Σ_I V_Iᵀ C⁻¹ (I: r largest = IPM, r smallest = KPM);  "
            "W_res = W − s·BA")
CITATION = (
    "Yang, Li, Zhou, Song, Wu, Nie, Ghanem, CorDA, arXiv:2406.05223 (NeurIPS 2024), §3.2 (context-oriented "
    "decomposition: C = XXᵀ of the layer inputs X (d_in × BL), eq. (2) SVD(WC) = UΣVᵀ, eq. (3) Ŵ = UΣ(VᵀC⁻¹); a "
    "singular C is damped by adding a coefficient × mean(diag C) to its diagonal, doubled until ‖CC⁻¹ − I‖ is below "
    "a threshold), §3.3 eq. (4) (knowledge-preserved: B = U[:, −r:]√Σ[−r:], A = √Σ[−r:](VᵀC⁻¹)[−r:, :], W′ = W − BA) "
    "and §3.4 eq. (5) (instruction-previewed: the first r components); no α/r factor (α = r)"
)

# the covariance is over every token the attention mask keeps; labels = -100 mark no CorDA token (the
# calibration-mask check reads this: only padding must leave the init unchanged)
LABEL_MASK = False


def scaling(cfg: dict) -> float:
    """s = alpha/r; ``use_rslora`` is refused (not part of the reference formula)."""
    return lowrank_scaling(cfg, allow_rslora=False)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W_res + s·B A, b_eff = b (arXiv:2406.05223 §3.3 eq. (4): the frozen residual W′ plus the adapter)."""
    return f64(W) + scaling(cfg) * (f64(state["B"]) @ f64(state["A"])), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md); state: A (r, d_in),
    B (d_out, r); the layer weight is W_res."""
    r = int(cfg["r"])
    return {"A": (r, d_in), "B": (d_out, r)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def _covariance(inputs: torch.Tensor, d_in: int, dtype: torch.dtype) -> torch.Tensor:
    """C = XᵀX / n of the layer inputs X (tokens, d_in), not centred. §3.2 writes C = XXᵀ, a sum over the tokens;
    the 1/n rescales C only, which moves a factor between B and A and leaves s·BA unchanged."""
    if inputs is None:
        raise ValueError("CorDA's init is data-driven: pass the layer's calibration inputs (tokens, d_in)")
    X = inputs.detach().reshape(-1, d_in).to(dtype)
    return X.T @ X / X.shape[0]


def _damped(C: torch.Tensor, cfg: dict) -> torch.Tensor:
    """C + λI, λ = cfg["damping"]·mean(diag C) (0: C itself). §3.2 adds this form of λ only where C is not
    invertible, starting from an unstated coefficient and doubling it until ‖CC⁻¹ − I‖ is below an unstated
    threshold; here the coefficient is the card's open choice, fixed."""
    damp = float(cfg.get("damping", 0.0))
    return C + damp * torch.diagonal(C).mean() * torch.eye(C.shape[0], dtype=C.dtype) if damp else C


def _components(W: torch.Tensor, C: torch.Tensor, r: int, mode: str):
    """(U_I, Σ_I, V_Iᵀ C⁻¹) of W C = U Σ Vᵀ in the tensors' dtype (§3.2 eqs. (2)-(3)); I by ``mode`` (§3.3-3.4)."""
    U, S, Vh = torch.linalg.svd(W @ C, full_matrices=False)
    I = slice(0, r) if mode == "ipm" else slice(S.shape[0] - r, S.shape[0])
    return U[:, I], S[I], torch.linalg.solve(C, Vh[I].T).T


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """CorDA init (arXiv:2406.05223 §3.2-3.4): s·BA is the part U_I Σ_I V_Iᵀ C⁻¹ of the context-oriented
    decomposition of the ORIGINAL W (I: the r largest components for IPM, the r smallest for KPM), split as
    B = U_I √(kΣ_I/s), A = √(kΣ_I/s) V_Iᵀ C⁻¹. Stated up to the signs of the singular pairs, rotations inside
    repeated singular values and the scale k of C (a sum or a mean over tokens moves weight between A and B
    only), with C regularised as cfg["damping"] says (the card's open choice): s·BA (relative to its max); BᵀB diagonal (B's columns orthogonal: the left singular vectors);
    ‖b_j‖²/σ_j one number for every column (the square-root split, max/min − 1).
    """
    s = scaling(cfg)
    A, B = state["A"].detach().to(torch.float64), state["B"].detach().to(torch.float64)
    r = A.shape[0]
    C = _damped(_covariance(inputs, W.shape[1], torch.float64), cfg)
    U, S, Vhat = _components(W.detach().to(torch.float64), C, r, cfg.get("corda_method", "ipm"))
    gram = B.T @ B
    d = torch.diagonal(gram)
    off = (gram - torch.diag(d)).abs().max() / d.abs().max().clamp(min=1e-300)
    # σ of each column of B: the singular direction it lies along (a column may carry any sign)
    match = (U.T @ B).abs().argmax(dim=0)
    ratio = d / S[match].clamp(min=1e-300)
    spread = float(ratio.max() / ratio.min() - 1.0) if float(ratio.min()) > 0 else 1.0
    return [
        InitClaim("adapter_part", "deterministic", "§3.3-3.4 eqs. (4)-(5): s·BA = U_I Σ_I V_Iᵀ C⁻¹, the selected "
                  "components of W C inverted back by C⁻¹", value=rel_max(s * (B @ A), (U * S) @ Vhat)),
        InitClaim("B_orthogonal_columns", "deterministic", "§3.3-3.4: B = U_I √(kΣ_I/s): BᵀB diagonal (off-diagonal "
                  "relative to the largest diagonal entry)", value=float(off)),
        InitClaim("sqrt_split_spread", "deterministic", "§3.3-3.4: ‖b_j‖²/σ_j equal for every column (the square-root "
                  "split of Σ_I between B and A; max/min − 1)", value=spread),
    ]


def init_reference(W, b, cfg, inputs=None) -> dict[str, torch.Tensor]:
    """A = √(Σ_I/s) V_Iᵀ C⁻¹, B = U_I √(Σ_I/s) in compute_dtype() (§3.3 eq. (4), §3.4 eq. (5))."""
    r = int(cfg.get("r_layer", cfg["r"]))
    dt = compute_dtype()
    C = _damped(_covariance(inputs, W.shape[1], dt), cfg)
    U, S, Vhat = _components(f64(W), C, r, cfg.get("corda_method", "ipm"))
    sq = torch.sqrt(S / scaling(cfg))
    return {"A": sq.unsqueeze(1) * Vhat, "B": U * sq}
