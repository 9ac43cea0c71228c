"""Card: DoRA (Liu et al., arXiv 2402.09353)."""

from ..cards import SUBJECT_DEFAULTS, ConfigCase, Invariant, OpenChoice, Option, VariantCard, ZeroGrad
from .lora import A_DRAW

# eq. (5) differentiates through ‖W + sBA‖; §4.3 proposes treating it as a constant in backprop to save
# memory ("we propose to treat ‖V + ΔV‖_c as a constant, thereby detaching it from the gradient graph"),
# which peft and ours take. The values are the same either way; only A's and B's gradients differ.
NORM_GRADIENT = OpenChoice(
    "norm_gradient", "whether the gradient flows through the row norm ‖W + sBA‖ (the values are the same)",
    "equation",
    (Option("through", "through the norm (eq. 5 as written)", "arXiv 2402.09353 §4.1 eq. (5)",
            {"detach_norm": False}, ("paper", "lycoris")),
     Option("detached", "the norm a constant in backprop (§4.3's memory saving)",
            "arXiv 2402.09353 §4.3; peft/tuners/lora/dora.py (weight_norm.detach())",
            {"detach_norm": True}, ("peft", "ours", "torchtune"))),
    affects="gradients")


def _magnitude(p) -> float:
    """max |‖W_eff‖_row − m| / max m, with W_eff read off our hooked layer."""
    w_eff, _ = p.effective
    m = p.state["m"]
    return float((w_eff.norm(dim=1) - m).abs().max() / m.abs().max())


CARD = VariantCard(
    name="dora",
    paper="DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al., 2024), §4.1 eq. 5, §4.3",
    arxiv="2402.09353",
    equation="W' = m ⊙ (W + s·BA) / ‖W + s·BA‖_row  (§4.3: the norm may be a constant in backprop)",
    config={"r": 4, "alpha": 8.0},
    references=("paper", "peft"),
    identity="exact",
    zero_grads={"A": ZeroGrad("B = 0 at init, so A's gradient s·Bᵀ(…) is exactly zero; m and B get gradients")},
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out) + d_out,
    invariants=(Invariant("row_norm_vs_magnitude_rel_err", "each output row of W_eff has norm m",
                          _magnitude, {"float32": 1e-6, "bfloat16": 2 * 2.0 ** -8}),),
    config_id="alpha8-r4",
    config_why="alpha ≠ r: s = alpha/r = 2 inside the normalised direction",
    configs=(ConfigCase("alpha-eq-r", {"alpha": 4.0}, "alpha = r: s = 1"),
             ConfigCase("rslora", {"use_rslora": True}, "rsLoRA on: s = alpha/√r (peft's DoRA accepts use_rslora)"),
             SUBJECT_DEFAULTS),
    choices=(A_DRAW, NORM_GRADIENT),
)
