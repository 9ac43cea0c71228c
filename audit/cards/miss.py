"""Card: MiSS, matrix shard sharing (Kang, Yin, arXiv 2409.15371; earlier titled Bone, then DiSHA).

Three forms peft ships, each a config axis (peft's init_weights): balance (the default: one fragment D (r, d_out)
shared by every r-wide input shard), mini (D itself tiled from (r, mini_r) along d_out) and bat (block-affine:
W_ij + W_ij B_i + B_i on r × r blocks, B indexed by the output block). Every form starts at D = 0 (exact identity).
"""
import math

import torch

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, VariantCard, peft_linear_only


def _shared_structure(p) -> float:
    """ΔW = W_eff − W read off the hooked layer has the structure of the form, whatever D is:
    balance / mini: it repeats with period r along d_in (column k equals column k mod r: every shard shares D);
    bat: each output block row i has one B_i: solving (W_ij + I) X = ΔW_ij gives the same X for every input block j.
    Max deviation relative to N = max|W| + max|ΔW| + max|b| (bat: times √r·max_ij ‖(W_ij + I)⁻¹‖₂, the solve's
    amplification): the read-off ΔW carries the rounding of y(I) = I·Wᵀ + b + I·ΔWᵀ, of the order u·N (bound 8u: a
    few roundings per entry)."""
    w_eff, b_eff = p.effective
    dw = w_eff - p.weight
    n = float(p.weight.abs().max() + dw.abs().max() + b_eff.abs().max())
    if p.cfg.get("mode", "balance") == "bat":
        r = p.state["D"].shape[-1]
        (d_out, d_in), eye = dw.shape, torch.eye(r, dtype=dw.dtype)
        blocks = [[(p.weight[i:i + r, j:j + r] + eye, dw[i:i + r, j:j + r]) for j in range(0, d_in, r)]
                  for i in range(0, d_out, r)]
        worst, amp = 0.0, 0.0
        for row in blocks:
            xs = [torch.linalg.solve(m, d) for m, d in row]
            amp = max(amp, max(float(torch.linalg.matrix_norm(torch.linalg.inv(m), ord=2)) for m, _ in row))
            worst = max(worst, max(float((x - xs[0]).abs().max()) for x in xs))
        return worst / (n * math.sqrt(r) * amp)
    r = p.state["D"].shape[0]
    period = dw[:, [j % r for j in range(dw.shape[1])]]
    return float((dw - period).abs().max()) / n


def _trainable(d_in: int, d_out: int, c: dict) -> int:
    """balance: r·d_out; bat: (d_out/r)·r·r = r·d_out; mini: r·mini_r."""
    r = c["r_layer"]
    return r * int(c.get("mini_r", 1)) if c.get("mode") == "mini" else r * d_out


CARD = VariantCard(
    name="miss",
    paper="MiSS: Revisiting the Trade-off in LoRA with an Efficient Shard-Sharing Structure (Kang, 2024; earlier "
          "Bone / DiSHA), §4.1-4.2 eqs. (2), (4)-(7)",
    arxiv="2409.15371",
    equation="balance: ΔW = [Dᵀ | Dᵀ | … | Dᵀ] (column k = D[k mod r]ᵀ);  mini: D[:, o] = D_s[:, o mod mini_r];  "
             "bat: W'_ij = W_ij + W_ij B_i + B_i;  W_eff = W + ΔW, no scale;  D = 0 at init",
    config={"r": 8},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=_trainable,
    invariants=(Invariant("shared_structure_residual", "ΔW read off the hooked layer has the form's sharing: balance / "
                          "mini repeat with period r along the input (every shard shares D); bat has one B_i per output "
                          "block row ((W_ij + I)⁻¹ΔW_ij the same for every j)", _shared_structure,
                          {"float32": 8 * 2.0 ** -24, "bfloat16": 8 * 2.0 ** -8}),),
    bad_inputs=(BadInput({"r": 98}, ValueError),                    # r > d_in on every zoo layer
                BadInput({"mode": "bat", "r": 7}, ValueError),      # 7 divides no zoo width
                BadInput({"mode": "mini", "mini_r": 7}, ValueError),
                BadInput({"mini_r": 0, "mode": "mini"}, ValueError),
                BadInput({"mode": "gaussian"}, ValueError)),
    perturb={"D": 0.2},
    config_id="r8",
    config_why="balance (peft's default form), shards of r = 8 dividing every zoo width",
    configs=(ConfigCase("bat", {"mode": "bat"}, "the block-affine form: ΔW depends on W (a transposed Conv1D weight "
                        "must be read in its canonical layout), B indexed by the output block; merge too (peft unmerges by "
                        "solving (W' − B)(I + B)⁻¹)",
                        models=("mlp", "gpt2"), dtypes=("float32", "bfloat16"), checks=("identity_at_init", "init", "grad_flow", "paper_parity",
                                                        "peft_parity", "properties", "merge", "save_load")),
             ConfigCase("mini", {"mode": "mini", "mini_r": 16}, "mini: D tiled from (r, mini_r = 16) along d_out "
                        "(16 divides 48 and 80)"),
             ConfigCase("partial-shard", {"r": 12}, "r = 12 does not divide d_in = 80 (the MLP's down projection): the "
                        "last shard is partial (x zero-padded, ΔW[:, k] = D[k mod r]ᵀ)"),
             ConfigCase("defaults", {}, SUBJECT_DEFAULTS.why, subject_defaults=True, models=("qwen3",))),
    deviations=(peft_linear_only("miss", "peft/tuners/miss/model.py _get_tuner_layer_class (torch.nn.Linear only; "
                                         "MissModel._create_new_module raises TypeError 'not supported')"),),
    notes="r defaults to 64 (peft's); the defaults config runs on qwen3, whose every d_in (64, 96) takes r = 64 "
          "(the toy MLP's 48 cannot). The partial last shard and the mini tiling are peft's extensions, audited as "
          "peft computes them.",
)
