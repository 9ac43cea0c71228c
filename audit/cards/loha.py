"""Card: LoHa (FedPara, Hyeon-Woo et al., arXiv 2108.06098; LyCORIS, arXiv 2309.14859), s = alpha / r."""
import torch

from ..cards import (SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, OpenChoice, Option, VariantCard, ZeroGrad,
                     peft_linear_only)
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


# ΔW = s·P ⊙ Q with P = w1_a w1_b, Q = w2_a w2_b: one zero factor zeroes its own product, so the other
# product's two factors get no gradient (∂L/∂P = s·G ⊙ Q = 0), and so does the zero factor's partner
# (∂L/∂w2_a = (∂L/∂Q) w2_bᵀ = 0 while w2_b = 0); only the zero factor itself learns at step 0.
_PARTNER = {"w1_a": "w1_b", "w1_b": "w1_a", "w2_a": "w2_b", "w2_b": "w2_a"}


def _zero_grads(cfg: dict) -> dict[str, ZeroGrad]:
    """The tensors dead at step 0 under the init's zero factor (cfg["zero_factor"], an open choice)."""
    zero = cfg.get("zero_factor", "w2_b")
    own, other = ("P = w1_a w1_b", "Q = w2_a w2_b") if zero.startswith("w1") else ("Q = w2_a w2_b", "P = w1_a w1_b")
    out = {n: ZeroGrad(f"{zero} = 0 at init, so {own} = 0 and ∂L/∂{other.split(' = ')[0]} = s·G ⊙ {own.split(' = ')[0]} "
                       f"= 0: {n} gets no gradient until {zero} moves")
           for n in _PARTNER if n[:2] != zero[:2]}
    out[_PARTNER[zero]] = ZeroGrad(f"its gradient is a product with {zero} = 0; only {zero} learns at step 0")
    return out


# which factor is zero and how the others are drawn: FedPara trains from scratch, so the adapter's zero
# factor and draws are the implementations' (each choice keeps ΔW = 0 exactly, an identity init)
ZERO_FACTOR = OpenChoice(
    "zero_factor", "which of the four factors is zero at init (any one makes ΔW = 0)", "init",
    tuple(Option(n, f"{n} = 0", src, {"zero_factor": n}, makers) for n, src, makers in (
        ("w2_b", "peft loha/layer.py reset_adapter_parameters (init_weights=True)", ("peft", "ours")),
        ("w2_a", "LyCORIS lycoris/modules/loha.py (the authors' code)", ("lycoris",)),
        ("w1_a", "any zero factor keeps ΔW = 0 (FedPara §3's product)", ()),
        ("w1_b", "any zero factor keeps ΔW = 0 (FedPara §3's product)", ()))))
FACTOR_DRAW = OpenChoice(
    "factor_draw", "the distribution of the three non-zero factors (FedPara §3: He init)", "init",
    (Option("kaiming_uniform", "kaiming-uniform U(±1/√fan_in)", "peft loha/layer.py (kaiming_uniform_(a=√5))",
            {"factor_draw": "kaiming_uniform"}, ("peft", "ours")),
     Option("gaussian", "Gaussian N(0, σ²), σ free per tensor",
            "LyCORIS lycoris/modules/loha.py (w1_a ~ N(0, 0.1²), w1_b, w2_b ~ N(0, 1))",
            {"factor_draw": "gaussian"}, ("lycoris",))))

CARD = VariantCard(
    name="loha",
    paper="FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated Learning (Hyeon-Woo, Ye-Bin, Oh, "
          "ICLR 2022), §3; as an adapter: LyCORIS (Yeh et al., ICLR 2024), §3",
    arxiv="2108.06098",
    equation="ΔW = s·(w1_a w1_b) ⊙ (w2_a w2_b),  s = α/r,  W′ = W + ΔW (bias unchanged);  one factor = 0 at init",
    config={"r": 4, "alpha": 8.0},
    references=("paper", "peft", "lycoris"),
    identity="exact",
    zero_grads=_zero_grads,
    trainable_per_layer=lambda d_in, d_out, c: 2 * c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("rank_excess", "rank ΔW ≤ r² (FedPara Proposition 1): σ_{r²+1}(W_eff − W) within the "
                          "worst-case rounding of reading W_eff off the layer", _rank_excess, {"*": 1.0}),),
    bad_inputs=(BadInput({"alpha": 0.0}, ValueError), BadInput({"alpha": float("inf")}, ValueError)),
    choices=(ZERO_FACTOR, FACTOR_DRAW),
    config_id="alpha8-r4",
    config_why="alpha ≠ r: s = alpha/r = 2, so a missing or wrong division shows; r² = 16 < every zoo layer's width",
    configs=(ConfigCase("alpha6-r2", {"r": 2, "alpha": 6.0}, "alpha ≠ r at another rank: s = 3 (a scale that is "
                        "neither 1 nor r nor alpha), rank ΔW ≤ 4"),
             ConfigCase("alpha4-r8", {"r": 8, "alpha": 4.0}, "r² = 64 > d_in·d_out/(d_in + d_out) on the toy MLP: an "
                        "implementation that chooses between forming ΔW and the r²-term product by size takes the "
                        "other path here, with s = 0.5 ≠ 1 (the defaults have s = 1, where a lost scale would not show)"),
             SUBJECT_DEFAULTS),
    deviations=(peft_linear_only("loha", "peft/tuners/loha/model.py:88-92 (layers_mapping: Conv2d, Conv1d, Linear); "
                                         "peft/tuners/lycoris_utils.py:240-259 (TypeError)"),),
    notes="Init: which factor is zero and how the others are drawn are open choices (peft: w2_b = 0, the rest "
          "kaiming-uniform; LyCORIS's own code: w2_a = 0 with Gaussian draws); every one is an exact identity, and "
          "the report says which the subject took. FedPara (§3) trains the Hadamard form from scratch with He init "
          "(no zero factor).",
    internals="Ours skips materialising ΔW where r²(d_in + d_out) ≤ d_in·d_out, computing x ΔWᵀ = (x Vᵀ) Uᵀ exactly "
              "with U, V the Khatri–Rao factors, and materialises it (HadamardDelta, its own backward) otherwise: "
              "config alpha4-r8 takes that path.",
)
