"""Card: CorDA (Yang et al., arXiv 2406.05223)."""

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, OpenChoice, Option, VariantCard

# §3.2 decomposes W C (eq. 2) and inverts C back (eq. 3); where C is not invertible (a LayerNorm's zero-sum
# outputs, too few tokens) §3.2 adds a coefficient × mean(diag C) to the diagonal, doubling it until ‖CC⁻¹ − I‖ is
# below a threshold, with neither number given: C itself where invertible, or the authors' released code's
# C + 0.01·mean(diag C)·I (applied always there, in peft and here)
DAMPING = OpenChoice(
    "covariance_damping", "the regulariser added to C before the decomposition", "init",
    (Option("none", "C as collected (invertible)", "arXiv 2406.05223 §3.2 eqs. (2)-(3) (W C, then C⁻¹)",
            {"damping": 0.0}, ("paper",)),
     Option("authors", "C + 0.01·mean(diag C)·I", "the authors' code, copied by peft/tuners/lora/corda.py "
            "collect_eigens_for_layer (damp = 0.01, doubled while ‖C̃C̃⁻¹ − I‖ ≥ 0.05)", {"damping": 0.01},
            ("peft", "ours"))))


def _reconstruction(p) -> float:
    """max |W_res + s·B A − W| / max (|W_res| + s·|B||A|) on the live layer at init (W_res is its weight).

    Normalised by the size of the summed terms (KPM's small components leave W_res ≈ W; IPM's large ones can
    make s|B||A| exceed |W|). Bound: W_res rounded to the base dtype (≤ u·|W_res|) plus A, B rounded to the
    adapter dtype (≤ 2u·s|B||A|): ≤ 4u in fp32; in bf16 W_res's rounding dominates (2u)."""
    s = p.cfg["alpha"] / p.cfg["r"]
    a, b = p.state["A"], p.state["B"]
    rebuilt = p.weight + s * (b @ a)
    size = (p.weight.abs() + s * (b.abs() @ a.abs())).max()
    return float((rebuilt - p.original_weight).abs().max() / size)


CARD = VariantCard(
    name="corda",
    paper="CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for Task-Aware "
          "Parameter-Efficient Fine-tuning (Yang et al., NeurIPS 2024), §3.2-3.4 eqs. (2)-(5)",
    arxiv="2406.05223",
    equation="W C = U Σ Vᵀ;  B = U_I √(Σ_I/s),  A = √(Σ_I/s) V_Iᵀ C⁻¹ (I: r largest = IPM, r smallest = KPM);  "
             "W_res = W − s·BA;  y = x(W_res + s·BA)ᵀ + b",
    config={"r": 4, "alpha": 4.0, "corda_method": "ipm"},
    references=("paper", "peft"),
    identity="numeric",
    needs_calibration=True,
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("reconstruction_rel_err", "W_res + s·BA reproduces the original W",
                          _reconstruction, {"float32": 4 * 2.0 ** -24, "bfloat16": 2 * 2.0 ** -8}, at="init"),),
    bad_inputs=(BadInput({"calibration_data": None}, ValueError),
                BadInput({"calibration_data": []}, ValueError),
                BadInput({"corda_method": "both"}, ValueError),
                BadInput({"r": 65}, ValueError),
                BadInput({"use_rslora": True}, ValueError)),
    choices=(DAMPING,),
    config_id="ipm",
    config_why="IPM (instruction-previewed: the r largest components adapted), alpha = r: s = 1, the paper's form",
    configs=(ConfigCase("kpm", {"corda_method": "kpm"}, "KPM (knowledge-preserved: the r smallest components "
                        "adapted, the large ones frozen in W_res)"),
             ConfigCase("alpha-ne-r", {"alpha": 8.0}, "alpha ≠ r: Σ_I divided by s = alpha/r before the square "
                        "root so that s·BA is the selected part of W for any alpha"),
             SUBJECT_DEFAULTS),
    deviations=(
        # measured (peft subject and peft's init beside ours, seeds 0-9): adapter_part up to 1.24 (qwen3 bf16, seed
        # 7: other components than the statement's, compared with its largest entry), sqrt_split_spread up to 0.60;
        # recomputing the statement with peft's per-sequence normalised C gives 2.6e-6 (toy MLP, seed 0)
        Deviation("peft-corda-max-normalised-covariance", "init",
                  "peft_adapter_part|peft_sqrt_split_spread|adapter_part|sqrt_split_spread", "peft", "xfail",
                  "peft's preprocess_corda divides each forward call's layer input by its largest value before "
                  "accumulating xᵀx (and averages per call), so C = mean_calls X_kᵀX_k / max(X_k)²: sequences are "
                  "re-weighted by their peak activation, not the covariance of the inputs §3.2 decomposes W with; "
                  "another C selects other components of W C",
                  "peft/tuners/lora/corda.py calib_cov_distribution (hook: input = input / torch.max(input).abs(); "
                  "module.covariance_matrix /= module.sample_count); arXiv 2406.05223 §3.2 (C = XXᵀ)",
                  magnitude=2.5),
        # measured 1.88-2.04 relative on the five decoders (fp32, seed 0), up to 2.30 over seeds 0-9: padding
        # rows change the covariance
        Deviation("peft-corda-padding-counted", "init", "masked_token_influence", "peft", "xfail",
                  "peft's CorDA hook accumulates every position of the layer input, padding included: it never sees "
                  "the attention mask, so right-padded calibration rows change C and with it the init",
                  "peft/tuners/lora/corda.py calib_cov_distribution (hook reads input[0] whole)",
                  magnitude=4.0, subjects=("peft",)),
        Deviation("peft-corda-checkpoint-needs-preprocessing", "save_load", "subject_raised", "peft", "xfail",
                  "a CorDA adapter saved by save_pretrained (init_lora_weights='corda') cannot be loaded by "
                  "PeftModel.from_pretrained: loading re-runs corda_init, which raises without preprocess_corda's "
                  "per-layer decomposition; peft's way is to convert at save time "
                  "(path_initial_model_for_weight_conversion: a rank-2r plain LoRA on the original base)",
                  "peft/tuners/lora/layer.py corda_init (ValueError '`eigens` attribute not found'); "
                  "peft/peft_model.py save_pretrained (path_initial_model_for_weight_conversion)",
                  magnitude=1.0, subjects=("peft",)),
    ),
    notes="The paper has no scale (alpha = r); peft divides Σ_I by s, as here. The covariance's normalisation "
          "(sum or mean over tokens) is left free by the init statement: it moves weight between A and B only.",
)
