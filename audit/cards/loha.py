"""Card: LoHa (FedPara, Hyeon-Woo et al., arXiv 2108.06098; LyCORIS, arXiv 2309.14859), s = alpha / r."""
import torch

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, VariantCard, ZeroGrad, peft_linear_only
from ..numerics import unit_roundoff


def _read_noise(p) -> torch.Tensor:
    """A worst-case bound (per entry) on the rounding in ΔW as read off the live layer (W_eff − W).

    The probe reads W_eff = y(I) − y(0). y(I) = fl(W + b) in the base dtype (u_b), plus ΔW computed in
    the adapter dtype (u_a; as a dense product or as r² rank-one terms: at most r² + 2r + 3 roundings of
    terms bounded by T = s·(|w1_a||w1_b|) ⊙ (|w2_a||w2_b|) ≥ |ΔW|), cast to the base dtype and added
    (two more base roundings); y(0) = fl(b). So |error| ≤ 3u_b(|W| + |b| + T) + (r² + 2r + 3)u_a·T.
    """
    w_dtype = p.adapted.weight(p.name).dtype
    a_dtype = p.adapted.tensors(p.name)["w1_a"].dtype
    ub, ua = unit_roundoff(w_dtype), unit_roundoff(a_dtype)
    st, r = p.state, p.state["w1_a"].shape[1]
    s = p.cfg["alpha"] / p.cfg["r"]
    t = abs(s) * (st["w1_a"].abs() @ st["w1_b"].abs()) * (st["w2_a"].abs() @ st["w2_b"].abs())
    b = p.effective[1].abs()[:, None]
    return 3 * ub * (p.weight.abs() + b + t) + (r * r + 2 * r + 3) * ua * t


def _rank_excess(p) -> float:
    """σ_{r²+1}(ΔW) / ‖rounding bound‖_F on our live layer: ΔW = W_eff − W has rank ≤ r² (FedPara
    Proposition 1), so its (r²+1)-th singular value is rounding only (Weyl: ≤ ‖E‖₂ ≤ ‖E‖_F) and this is ≤ 1.
    0 where r² ≥ min(d_in, d_out) (nothing to bound)."""
    w_eff, _ = p.effective
    d = w_eff - p.weight
    k = p.state["w1_a"].shape[1] ** 2
    if k >= min(d.shape):
        return 0.0
    return float(torch.linalg.svdvals(d)[k] / _read_noise(p).norm())


CARD = VariantCard(
    name="loha",
    paper="FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning (Hyeon-Woo, Ye-Bin, Oh, "
          "ICLR 2022), §3; as an adapter: LyCORIS (Yeh et al., ICLR 2024), §3",
    arxiv="2108.06098",
    equation="ΔW = s·(w1_a w1_b) ⊙ (w2_a w2_b),  s = α/r,  W′ = W + ΔW (bias unchanged);  w2_b = 0 at init",
    config={"r": 4, "alpha": 8.0},
    references=("paper", "peft"),
    identity="exact",
    zero_grads={
        "w1_a": ZeroGrad("w2_b = 0 at init, so Q = w2_a w2_b = 0 and ∂L/∂w1_a = s·(G ⊙ Q) w1_bᵀ = 0; it comes "
                         "alive once w2_b moves"),
        "w1_b": ZeroGrad("w2_b = 0 at init, so ∂L/∂w1_b = s·w1_aᵀ (G ⊙ Q) = 0 with Q = w2_a w2_b = 0"),
        "w2_a": ZeroGrad("∂L/∂w2_a = s·(G ⊙ P) w2_bᵀ = 0 while w2_b = 0; only w2_b learns at step 0"),
    },
    trainable_per_layer=lambda d_in, d_out, c: 2 * c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("rank_excess", "rank ΔW ≤ r² (FedPara Proposition 1): σ_{r²+1}(W_eff − W) within the "
                          "worst-case rounding of reading W_eff off the layer", _rank_excess, {"*": 1.0}),),
    bad_inputs=(BadInput({"alpha": 0.0}, ValueError), BadInput({"alpha": float("inf")}, ValueError)),
    config_id="alpha8-r4",
    config_why="alpha ≠ r: s = alpha/r = 2, so a missing or wrong division shows; r² = 16 < every zoo layer's width",
    configs=(ConfigCase("alpha6-r2", {"r": 2, "alpha": 6.0}, "alpha ≠ r at another rank: s = 3 (a scale that is "
                        "neither 1 nor r nor alpha), rank ΔW ≤ 4"),
             ConfigCase("alpha4-r8", {"r": 8, "alpha": 4.0}, "r² = 64 > d_in·d_out/(d_in + d_out) on the toy MLP, so "
                        "ours materialises ΔW (HadamardDelta, its own backward) instead of the r²-term product: that "
                        "path with s = 0.5 ≠ 1 (the defaults have s = 1, where a lost scale would not show)"),
             SUBJECT_DEFAULTS),
    deviations=(peft_linear_only("loha", "peft/tuners/loha/model.py:88-92 (layers_mapping: Conv2d, Conv1d, Linear); "
                                         "peft/tuners/lycoris_utils.py:240-259 (TypeError)"),),
    notes="Init is peft's (init_weights=True): w1_a, w1_b, w2_a kaiming-uniform, w2_b = 0. LyCORIS's own code zeroes "
          "w2_a instead, with Gaussian draws (w1_a ~ N(0, 0.1²), w1_b, w2_b ~ N(0, 1)): also an exact identity, with "
          "w2_a the only tensor learning at step 0; a documented difference, not audited. FedPara (§3) trains the "
          "Hadamard form from scratch with He init (no zero factor). Ours skips materialising ΔW where "
          "r²(d_in + d_out) ≤ d_in·d_out, computing x ΔWᵀ = (x Vᵀ) Uᵀ exactly with U, V the Khatri–Rao factors.",
)
