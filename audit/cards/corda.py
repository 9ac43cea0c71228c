"""Card: CorDA (Yang et al., arXiv 2406.05223)."""

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, OpenChoice, Option, VariantCard

# §3.1 decomposes W C and inverts C back; how a singular C (a LayerNorm's zero-sum outputs, too few tokens) is
# made invertible the paper leaves to the implementation: C itself where invertible, or the authors' released
# code's C + 0.01·mean(diag C)·I (applied always there, in peft and here)
DAMPING = OpenChoice(
    "covariance_damping", "the regulariser added to C before the decomposition", "init",
    (Option("none", "C as collected (invertible)", "arXiv 2406.05223 §3.1 (W C, then C⁻¹)", {"damping": 0.0},
            ("paper",)),
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
          "Parameter-Efficient Fine-tuning (Yang et al., NeurIPS 2024), §3.1-3.2",
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
    notes="The paper has no scale (alpha = r); peft divides Σ_I by s, as here. The covariance's normalisation "
          "(sum or mean over tokens) is left free by the init statement: it moves weight between A and B only.",
)
