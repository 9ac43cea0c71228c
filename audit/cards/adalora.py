"""Card: AdaLoRA (Zhang et al., arXiv 2303.10512), SVD-form update W⁽⁰⁾ + s·PΛQ with s = alpha / init_r."""
import torch

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, VariantCard, ZeroGrad
from ..numerics import unit_roundoff


def _masked_rank(p) -> float:
    """§3.1: pruning λ_k removes exactly the k-th rank-one term P_k λ_k Q_k. With λ of the upper half of
    the triplets set to 0 on the live layer, the subject's effective ΔW = W_eff − W must have rank m (the
    kept triplets): σ_{m+1}(ΔW_read) ≤ ‖N‖₂ ≤ ‖N‖_F (Weyl), N the rounding of the read map, each entry
    bounded by u·(|W + b + ΔW| + |ΔW|) (output and ΔW each rounded once) + (r + 3)·u·s Σ_k |P_jk λ_k Q_ki|
    (the rank-r reduction). Returns σ_{m+1} / ‖that entrywise bound‖_F: ≤ 1 for any correct
    implementation in any precision; an unmasked or mixed-up triplet gives σ_{m+1} ~ |ΔW|."""
    slot = p.adapted.slots[p.name]["E"]
    saved = slot.canonical(slot.tensor.detach()).clone()
    r = saved.shape[0]
    keep = r // 2
    masked = saved.clone()
    masked[keep:] = 0
    slot.write(masked)
    try:
        delta, y0 = p._response()
    finally:
        slot.write(saved)
    w = p.weight
    d = delta.t() - w  # ΔW as the subject computes it, (d_out, d_in)
    st = {k: v.to(torch.float64) for k, v in p.state.items()}
    s = p.cfg["alpha"] / p.cfg["r"]
    lam = masked.to(torch.float64).reshape(-1)
    terms = s * (st["B"].abs() * lam.abs()) @ st["A"].abs()
    u = max(unit_roundoff(p.adapted.weight(p.name).dtype), unit_roundoff(p.adapted.slots[p.name]["A"].tensor.dtype))
    bound = u * ((w + d + y0[:, None]).abs() + d.abs() + (r + 3) * terms)
    sv = torch.linalg.svdvals(d)
    return float(sv[keep] / bound.norm())


def _zero_grads():
    why = ("λ = 0 at init (§3.1), so ∂L/∂P = s·(∂L/∂h)ᵀ x Qᵀ Λ and ∂L/∂Q = s·Λ Pᵀ (∂L/∂h)ᵀ x vanish exactly; "
           "only λ moves at step 0")
    return {"A": ZeroGrad(why), "B": ZeroGrad(why)}


# peft's scale alpha / (init_r + 1e-5) is relative 1e-5/init_r (2.5e-6 at r = 4, 1.7e-6 at r = 6, 8e-7 at
# r = 12) below alpha / init_r. Every gradient of A and B is proportional to s, so their relative error
# carries it whole (measured 2.2-3.0e-6 at r = 4, 1.7e-6 at r = 6 in float32, 1.1-2.2× the rounding
# tolerance); λ's gradient (≤ 8 entries: error / Σ|terms|) carries at most 1e-5/r of Σ|terms| (measured
# 1-5e-7 against ours' 1-5e-8, so it crosses its 8u floor 4.8e-7 at some seeds); outputs carry it only times
# |ΔW x| / |y| (< 1e-6, within tolerance). Bound: the departure at the smallest audited r (1e-5/4) plus the
# largest float32 rounding tolerance of these rows (8 × spread, ≤ 2.6e-6 measured): 5.1e-6. In bfloat16 the rounding tolerance (~1e-2) already covers it.
# The states after peft_parity's Adam steps carry it too: each step moves a tensor by at most its gradient's
# relative departure times the step (Adam's x/(|x| + ε) moves by at most the relative change of x), so their
# relative error stays below the same bound (measured, seeds 0-9: 3.5e-8 to 1.1e-7, at most 0.13 of the
# tolerance; before Adam's ε followed the gradient's scale, up to 5.6e-7 at seed 6).
_EPS_TOL = 1e-5 / 4 + 2.6e-6
_EPS_WHY = ("peft scales by lora_alpha / (ranknum + 1e-5) with ranknum = init_r, not alpha / init_r (the authors' "
            "loralib has the same epsilon): relative 1e-5/init_r, carried whole by the A and B gradients")


def _peft_eps(check: str) -> Deviation:
    return Deviation(f"peft-adalora-ranknum-eps-{check}", check,
                     "grad_rel_err[A]|grad_rel_err[B]|grad_err_per_term_sum[E]|trajectory_state_rel_err", "peft",
                     "tolerance",
                     _EPS_WHY, "peft/tuners/adalora/layer.py:192 (forward), :172 (get_delta_weight)",
                     tolerance=_EPS_TOL, dtypes=("float32",), subjects=("peft",))


# peft re-creates ranknum when it casts the adapter to a base dtype other than float32 (fp64, bf16, fp16):
# ParameterDict.__setitem__ wraps the cast tensor in a new nn.Parameter, which requires grad, so ranknum
# (a scale constant) becomes trainable, gets a gradient and would be moved by the user's optimiser. One per
# adapted layer (measured in bfloat16: 4 on mlp, 8 on gpt2/phi3, 14 on qwen2/qwen3/llama; float32 bases are
# not cast and stay frozen).
_RANKNUM_WHY = ("peft's ranknum (the scale's denominator) becomes a trainable Parameter on a non-float32 base: "
                "_move_adapter_to_device_of_base_layer assigns item.to(dtype) into the ParameterDict, which wraps "
                "it in a fresh nn.Parameter (requires_grad=True); one extra trainable tensor per adapted layer, "
                "which gets a gradient and would be stepped by an optimiser")
_RANKNUM_SRC = "peft/tuners/tuners_utils.py:2210 (BaseTunerLayer._move_adapter_to_device_of_base_layer); peft/tuners/adalora/layer.py:82-84, 89"


def _peft_ranknum(tag: str, metric: str, magnitude: float, what: str) -> Deviation:
    # releases: measured by the release matrix (reports/peft-releases.md): 0.10.0-0.20.0 leave ranknum frozen on a
    # bfloat16 base (every grad_flow row passes there), 0.21.0 on make it trainable
    return Deviation(f"peft-adalora-ranknum-trainable-{tag}", "grad_flow", metric, "peft", "xfail",
                     f"{_RANKNUM_WHY} ({what}; from peft 0.21.0, as the release matrix measures)", _RANKNUM_SRC,
                     magnitude=magnitude, dtypes=("bfloat16",), subjects=("peft",), releases=">=0.21.0")


CARD = VariantCard(
    name="adalora",
    paper="AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (Zhang et al., ICLR 2023), §3.1 eq. 3-4",
    arxiv="2303.10512",
    equation="W = W⁽⁰⁾ + s·P Λ Q,  Λ = diag(λ) = 0 at init,  P, Q ~ N(0, 0.02²),  s = α/r (r = init_r);  "
             "loss + γ Σ(‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F)",
    config={"r": 4, "alpha": 8.0, "target_r": 2},
    references=("paper", "peft"),
    identity="exact",
    zero_grads=_zero_grads(),
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out + 1),
    invariants=(Invariant("masked_rank_excess", "with λ of the upper half of the triplets zeroed, ΔW has the rank of "
                          "the kept triplets (σ_{m+1} / its rounding bound)", _masked_rank, {"*": 1.0}),),
    bad_inputs=(BadInput({"target_r": 5}, ValueError),
                BadInput({"beta1": 1.0}, ValueError),
                BadInput({"orth_reg_weight": -0.5}, ValueError),
                BadInput({"total_step": 10, "tinit": 8, "tfinal": 5}, ValueError)),
    # λ starts at 0: the default perturbation (0.02) would leave ΔW ~ 1e-5·W, below what a wrong scale moves
    # in bf16; λ ~ N(0, 1) makes ΔW ~ 10% of W
    perturb={"E": 1.0},
    config_id="alpha8-r4",
    config_why="alpha ≠ r: s = alpha/r = 2 (r = init_r), so a wrong or missing division shows",
    configs=(ConfigCase("alpha3-r6", {"r": 6, "alpha": 3.0}, "alpha < r: s = 0.5, and an r the main config does not "
                        "use (a scale by target_r = 2 or by alpha alone differs)"),
             SUBJECT_DEFAULTS),
    deviations=(_peft_eps("paper_parity"), _peft_eps("peft_parity"),
                _peft_ranknum("tensors", "trainable_non_adapter|base_params_with_grad", 64,
                              "the row counts the ranknum tensors: one per adapted layer, at most 64 on the zoo"),
                # the row is the total trainable count (card formula + one per adapted layer); a magnitude on a
                # total is not a measure of the departure, so it only bounds the zoo's largest count
                _peft_ranknum("count", "trainable_params", 1e5, "the row is the total count, the card's formula + 1 per layer")),
    notes="Scale alpha / init_r (loralib's ranknum, kept fixed while λ is masked); peft divides by init_r + 1e-5. "
          "The orthogonality regulariser (eq. 4) and the rank allocator (§3.2-3.3) act on the loss and between "
          "optimiser steps, not in the forward: ours are variants.adalora.orthogonality_regularizer and "
          "RankAllocator, tested against the float64 formula and peft's RankAllocator in tests/test_adalora.py. "
          "peft's regulariser is the mean of the non-squared ‖cov − I‖_F over all A and B matrices "
          "(peft/tuners/adalora/model.py:229-257), not the paper's sum of squares, and only AdaLoraModel.forward "
          "adds it (a plain PeftModel call, peft/peft_model.py:1001-1007, bypasses it); measured at init (P, Q ~ N(0, 0.02²)): "
          "the paper's Σ R = 30.4 (mlp, 4 layers) and 106.1 (qwen2, 14 layers) against peft's 1.95 (≈ √r, whatever "
          "the layer count). peft's ranknum is a frozen Parameter on float32 bases but a trainable one on bf16/fp16/"
          "fp64 bases (declared: peft-adalora-ranknum-trainable-*).",
)
