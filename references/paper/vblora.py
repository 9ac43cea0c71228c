"""VB-LoRA paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): the vector bank ``bank`` (num_vectors, b), ONE tensor
shared by every adapted layer; ``logits_A`` (r, d_in/b, num_vectors), entry [i, t] the logits of the t-th
sub-vector of a_i (row i of A); ``logits_B`` (d_out/b, r, num_vectors), entry [t, i] the logits of the t-th
sub-vector of b_i (column i of B). b = vector_length.
"""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear, normal_pit
from .vera import KS_ALPHA, ks_margin

EQUATION = ("W_eff = W + Σ_i b_i a_iᵀ;  a_i = [v(σᴬ_{i,1}); …; v(σᴬ_{i,d_in/b})],  b_i = [v(σᴮ_{1,i}); …; "
            "v(σᴮ_{d_out/b,i})];  v(σ) = Σ_{s∈top-k(σ)} softmax(σ_top-k)_s 𝓑_s,  𝓑 shared by every layer")
CITATION = (
    "Li, Han, Ji, VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks, arXiv:2405.15179 (NeurIPS "
    "2024), §3.2: eq. (3.1) ΔW = BA = Σ_k b_k ⊗ a_k, eq. (3.2) each b_k, a_k the concatenation of sub-vectors of "
    "length b, eq. (3.3) each sub-vector u = Σ_s w_s(σ)α_s, w(σ) = Softmax(TopK(σ, k)) (the logits outside the top k "
    "set to −∞) over the bank 𝓑 = {α₁, …, α_h}; §3.3: one bank shared across sub-vectors, modules and layers; "
    "Algorithm 1 (topk, softmax over the k, weighted sum of the bank rows). The index order of the logits tensors "
    "(which logit row composes which sub-vector) is peft's layout (tuners/vblora/layer.py), a relabelling the paper "
    "leaves open: Algorithm 1 writes x·W + (x·B)·A, its B the input-side factor, and eq. (3.1) B (m × r) the "
    "output-side one"
)


def admixture(sigma: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """v(σ) = Σ_{s ∈ top-k(σ)} e^{σ_s} / Σ_{s' ∈ top-k(σ)} e^{σ_s'} · 𝓑_s for one sub-vector's logits σ
    (num_vectors,) (§3.2 eq. (3.3)): the logits outside the top k are −∞ before the softmax."""
    sigma, bank = f64(sigma), f64(bank)
    chosen = torch.argsort(sigma, descending=True, stable=True)[:k]
    masked = torch.full_like(sigma, float("-inf")).index_put((chosen,), sigma[chosen])
    w = torch.exp(masked - masked.max())
    w = w / w.sum()
    return w @ bank  # rows outside the top k get weight exactly 0


def factors(state: dict, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, d_in), B (d_out, r)) composed sub-vector by sub-vector from the bank (§3.2 eqs. (3.2)-(3.3))."""
    bank, la, lb = state["bank"], state["logits_A"], state["logits_B"]
    k = int(cfg["topk"])
    r, t_in, _ = la.shape
    t_out = lb.shape[0]
    rows = [torch.cat([admixture(la[i, t], bank, k) for t in range(t_in)]) for i in range(r)]
    cols = [torch.cat([admixture(lb[t, i], bank, k) for t in range(t_out)]) for i in range(r)]
    return torch.stack(rows), torch.stack(cols, dim=1)


def delta(W: torch.Tensor, state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = Σ_i b_i a_iᵀ (d_out, d_in); the sub-vectors must tile W exactly."""
    d_out, d_in = W.shape
    A, B = factors(state, cfg)
    if A.shape[1] != d_in or B.shape[0] != d_out:
        raise ValueError(f"the sub-vectors tile A {tuple(A.shape)}, B {tuple(B.shape)}, not W {tuple(W.shape)}")
    out = torch.zeros(d_out, d_in, dtype=A.dtype, device=A.device)
    for i in range(A.shape[0]):
        out = out + torch.outer(B[:, i], A[i])
    return out


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + Σ_i b_i a_iᵀ, b_eff = b (arXiv:2405.15179 §3.2 eq. (3.1)); no scale."""
    return f64(W) + delta(W, state, cfg), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors and shapes (references/STATE_LAYOUT.md)."""
    r, n, L = int(cfg["r"]), int(cfg["num_vectors"]), int(cfg["vector_length"])
    return {"bank": (n, L), "logits_A": (r, d_in // L, n), "logits_B": (d_out // L, r, n)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """VB-LoRA's init as the authors' code and peft state it (config fields init_vector_bank_bound,
    init_logits_std): the shared bank ~ U(±bound) and every logit ~ N(0, std²). The paper's Appendix A.1
    Table 7 (GLUE) lists "Init. of the Vector Bank U(−0.02, 0.02)" and "Init. of the Logits N(0, 0.01)": the
    defaults bound 0.02, std 0.1 if its 0.01 is the variance (the notation does not say). The bank claim is a
    "lower" row, the KS margin of the ONE shared matrix (pooling it per layer would count each draw once per
    layer: references/paper/vera.py ks_margin); the logits are drawn per layer and pooled as a distribution
    claim. There is no identity claim: ΔW₀ = B₀A₀ ≠ 0."""
    bound, std = float(cfg.get("init_vector_bank_bound", 0.02)), float(cfg.get("init_logits_std", 0.1))
    bank = state["bank"]
    claims = [InitClaim("bank_uniform_ks_margin", "lower", f"the shared bank ({bank.shape[0]}×{bank.shape[1]}) "
                        f"~ U(±{bound:g}); KS margin at α = {KS_ALPHA:g} over its {bank.numel()} draws",
                        value=ks_margin(bank, bound), bound=0.0)]
    if std > 0:
        for t in ("logits_A", "logits_B"):
            claims.append(InitClaim(f"{t}_gaussian", "distribution", f"{t} ~ N(0, {std:g}²)",
                                    pit=normal_pit(state[t], 0.0, std)))
    else:
        for t in ("logits_A", "logits_B"):
            claims.append(InitClaim(f"{t}_max_abs", "exact", f"init_logits_std = 0: {t} = 0",
                                    value=float(state[t].detach().abs().max())))
    return claims
