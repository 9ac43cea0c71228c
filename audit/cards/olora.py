"""Card: OLoRA (Büyükakyüz, arXiv 2406.01775)."""
import math

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, VariantCard


def _scale(cfg: dict) -> float:
    r, alpha = cfg["r"], cfg["alpha"]
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _reconstruction(p) -> float:
    """max |W_res + s·B A − W| / max (|W_res| + s·|B||A|) on the live layer at init (W_res is its weight).

    Normalised by the size of the summed terms: with s > 1 the residual W − s·Q_rR_r can be larger than W,
    and each term carries its own rounding. Bound: W_res rounded to the base dtype (≤ u·|W_res|) plus A, B
    rounded to the adapter dtype (≤ 2u·s|B||A|): ≤ 4u in fp32; in bf16 W_res's rounding dominates (2u)."""
    s = _scale(p.cfg)
    a, b = p.state["A"], p.state["B"]
    rebuilt = p.weight + s * (b @ a)
    size = (p.weight.abs() + s * (b.abs() @ a.abs())).max()
    return float((rebuilt - p.original_weight).abs().max() / size)


CARD = VariantCard(
    name="olora",
    paper="OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models (Büyükakyüz, 2024), §3",
    arxiv="2406.01775",
    equation="W = QR;  B = Q[:, :r],  A = R[:r, :],  W_res = W − s·BA;  y = x(W_res + s·BA)ᵀ + b,  s = α/r",
    config={"r": 4, "alpha": 8.0},
    references=("paper", "peft"),
    identity="numeric",
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("reconstruction_rel_err", "W_res + s·BA reproduces the original W",
                          _reconstruction, {"float32": 4 * 2.0 ** -24, "bfloat16": 2 * 2.0 ** -8}, at="init"),),
    bad_inputs=(BadInput({"r": 65}, ValueError),),
    config_id="alpha8-r4",
    config_why="alpha ≠ r: s = alpha/r = 2 enters both W_res = W − s·BA and the forward",
    configs=(ConfigCase("alpha-eq-r", {"alpha": 4.0}, "alpha = r: s = 1"),
             ConfigCase("rslora", {"use_rslora": True}, "rsLoRA on: s = alpha/√r = 4 in W_res and the forward"),
             SUBJECT_DEFAULTS),
    deviations=(
        Deviation("peft-olora-conv1d-untransposed", "layout", "canonical_shape_mismatch", "peft", "xfail",
                  "peft's olora_init takes the QR of a Conv1D's stored weight Wᵀ (d_in, d_out) without transposing "
                  "it (pissa_init does transpose), so B = Q[:, :r] is (d_in, r) and A = R[:r] is (r, d_out): on "
                  "GPT-2's non-square c_attn/c_fc the adapted layer holds A, B of the wrong canonical shapes (its "
                  "forward raises a shape error); on the square attn.c_proj the init silently differs from W (measured "
                  "with peft on the zoo's gpt2, c_proj alone targeted, r = 4, alpha = 8: layer output off by 0.69 "
                  "of its max, logits by 0.22)",
                  "peft/tuners/lora/layer.py:400-408 (olora_init: torch.linalg.qr(weight_tensor.data), no "
                  "transpose(..., fan_in_fan_out)); compare pissa_init :437; Conv1D dispatch :2758-2763",
                  magnitude=1.0, models=("gpt2",), subjects=("peft",)),
        # the same bug seen from ours: the init check's second reference (peft's own init of the cell's
        # config, run in float32 only)
        Deviation("peft-olora-conv1d-untransposed-init", "init", "peft_canonical_shape_mismatch", "peft", "xfail",
                  "peft's own OLoRA init on GPT-2 (the init check's second reference) holds A (r, d_out) and "
                  "B (d_in, r): the QR of the stored Conv1D weight Wᵀ, not of W",
                  "peft/tuners/lora/layer.py:400-408 (olora_init, no transpose for fan_in_fan_out)",
                  magnitude=1.0, models=("gpt2",), dtypes=("float32",), subjects=("ours",)),
    ),
    notes="The paper's residual with or without s is unverified; peft (the author's PR #1828) subtracts s·BA, as here. "
          "peft silently clips r to min(d_in, d_out) (ours refuses) and refuses float64 bases (TypeError, "
          "peft/tuners/lora/layer.py:393-396); neither is audited by default (peft's robustness rows are n/a, "
          "float64 is not in the default dtypes).",
)
