"""Card: EVA (Paischer et al., arXiv 2410.07170)."""
import torch

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, VariantCard, ZeroGrad


def _orthonormal(p) -> float:
    """max |AAᵀ − I|: the rows of A are orthonormal principal directions at init (whiten: orthogonal, so
    their unit rows)."""
    a = p.state["A"]
    if p.cfg.get("whiten"):
        a = a / a.norm(dim=1, keepdim=True)
    return float((a @ a.t() - torch.eye(a.shape[0], dtype=a.dtype)).abs().max())


CARD = VariantCard(
    name="eva",
    paper="One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation (Paischer et al., 2024), §3",
    arxiv="2410.07170",
    equation="A_l = top-r_l right singular vectors of the centred layer inputs X_l;  B = 0;  y = xWᵀ + b + s·(xAᵀ)Bᵀ",
    config={"r": 4, "alpha": 8.0},
    references=("paper", "peft"),
    identity="exact",
    needs_calibration=True,
    zero_grads={"A": ZeroGrad("B = 0 at init, so A's gradient is exactly zero (as LoRA)")},
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("A_orthonormality_err", "rows of A are orthonormal principal directions",
                          _orthonormal, {"*": 4 * 2.0 ** -24 * 8}, at="init"),),
    config_id="alpha8-r4",
    config_why="rank r everywhere (rho = 1), alpha ≠ r",
    configs=(ConfigCase("rho2", {"rho": 2.0}, "rank redistribution (rho = 2, peft's default): each layer offers 2r "
                        "components and the globally top r × layers are kept"),
             ConfigCase("alpha-eq-r", {"alpha": 4.0}, "alpha = r: s = 1"),
             ConfigCase("no-scale-adjust", {"rho": 2.0, "adjust_scaling_factors": False},
                        "peft's adjust_scaling_factors=False after rank redistribution: each layer keeps alpha, so "
                        "s_l = alpha/r_l differs between layers"),
             ConfigCase("whiten", {"whiten": True}, "peft's whiten: each direction over the square root of its "
                        "singular value (σ_i = √(n·λ_i)), the scale of the whole row set left free"),
             ConfigCase("label-mask-off", {"use_label_mask": False}, "peft's use_label_mask=False: calibration "
                        "tokens with labels = -100 count (padding still does not)", models=("qwen3",),
                        checks=("init",)),
             SUBJECT_DEFAULTS),
    deviations=(
        Deviation("peft-eva-approximate-subspace", "init", "peft_A_subspace_err|A_subspace_err", "peft", "xfail",
                  "peft's EVA finds A by an incremental PCA whose batches use a randomised svd_lowrank and that "
                  "stops once consecutive batches' components agree to cosine tau = 0.99: its row space is an "
                  "approximation of the calibration data's top-r principal subspace, not that subspace (a "
                  "projector distance up to 1 on the tiny zoo, where the eigen-gaps are small)",
                  "peft/tuners/lora/eva.py get_eva_state_dict (IncrementalPCA lowrank=True, sim_thresh=tau); "
                  "arXiv 2410.07170 §3 states the exact top-r right singular vectors",
                  magnitude=1.0),
        Deviation("peft-eva-approximate-variance", "init",
                  "peft_captured_variance_shortfall|captured_variance_shortfall", "peft", "xfail",
                  "the same approximation in explained variance: peft's A captures less of the top-r variance than "
                  "the exact principal directions (measured 2-8% short on the zoo)",
                  "peft/tuners/lora/eva.py get_eva_state_dict; arXiv 2410.07170 §3",
                  magnitude=0.25),
        # measured 0.022 (toy MLP, float32, seed 0): the singular values come from the same approximation
        Deviation("peft-eva-approximate-whitening", "init", "peft_A_whitening_spread|A_whitening_spread", "peft",
                  "xfail", "with whiten, peft divides each direction by the square root of its incremental-PCA "
                  "singular value, an estimate from the batches seen before convergence: the rows' scales follow "
                  "the exact λ_i^{-1/4} only approximately",
                  "peft/tuners/lora/eva.py get_eva_state_dict (u /= hook.svd.singular_values_[:rank].sqrt())",
                  magnitude=0.2, when={"whiten": True}),
    ),
    bad_inputs=(BadInput({"calibration_data": None}, ValueError),
                BadInput({"calibration_data": []}, ValueError),
                BadInput({"rho": 0.5}, ValueError)),
)
