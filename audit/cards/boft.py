"""Card: BOFT (Liu et al., arXiv 2311.06243), a product of butterfly-permuted block-diagonal Cayley rotations."""
import torch


from ..cards import (CONFIG_CHECKS, SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, OpenChoice, Option,
                     VariantCard, peft_linear_only)

U32, U16 = 2.0 ** -24, 2.0 ** -8  # unit round-off of float32, of bfloat16 (8 significand bits)


def _gram_err(m: torch.Tensor) -> float:
    return float((m.t() @ m - torch.eye(m.shape[0], dtype=m.dtype)).abs().max())


def _orthogonality(p) -> float:
    """max |MᵀM − I| of the subject's input map x ↦ x M (M = R, a product of orthogonal components, §4)."""
    return _gram_err(p.input_map)


def _energy(p) -> float:
    """max |W_eff W_effᵀ − W Wᵀ| / max |W Wᵀ|: neuron angles and norms kept by an orthogonal R (§3, §5)."""
    w_eff, _ = p.effective
    gram = p.weight @ p.weight.t()
    return float((w_eff @ w_eff.t() - gram).abs().max() / gram.abs().max())


def _spectrum(p) -> float:
    """max |σ(M) − 1|: every singular value of an orthogonal R is 1 (§5 'spectral properties')."""
    return float((torch.linalg.svdvals(p.input_map) - 1).abs().max())


def _trainable(d_in: int, d_out: int, c: dict) -> int:
    """½(b − 1)·d·m effective parameters (§4)."""
    b = c.get("block_size") or d_in // c["block_num"]
    return c.get("n_butterfly_factor", 1) * (d_in // b) * b * (b - 1) // 2


# Tolerances. float32: each component's blocks come from a solve with I − Q_i normal (cond ≤ √(1 + θ²) ≤ √2),
# entries off by a few u; the product of m ≤ 3 components adds m such errors (the permutations are exact),
# and a Gram entry sums ≤ 96 products: 8 · 64 · u per component (OFT's bound), times 3 for the product.
# bfloat16: the probe reads M through a bf16 layer, each entry rounded once (|E_ij| ≤ u|M_ij|): a Gram entry
# moves by ≤ 2u (unit columns), the singular values by ≤ ‖E‖_2 ≤ u·√(nonzeros per column) ≤ u·√96; twice each.
# Energy: W_eff = y(I) − y(0) carries the rounding of M and of x R Wᵀ + b; the ratio sums d_in ≤ 96 products:
# 8 · 128 · u · 3 in float32, 4u in bfloat16 (OFT's bound; the bf16 rounding of W_eff does not grow with m).
_TOL_GRAM = {"float32": 3 * 8 * 64 * U32, "bfloat16": 4 * U16}
_TOL_ENERGY = {"float32": 3 * 8 * 128 * U32, "bfloat16": 4 * U16}
_TOL_SPECTRUM = {"float32": 3 * 8 * 64 * U32, "bfloat16": 2 * U16 * 96 ** 0.5}

# How the skew matrices are stored for training: §3 trains "a skew-symmetric matrix Q" and §4 counts
# "½(b − 1)dm effective trainable parameters", leaving the storage open. Packed strict upper triangles (ours) and
# full blocks whose skew part ½(B − Bᵀ) acts (the authors' code, which peft's BOFT is) give the same function and
# the same gradient in Q; an optimiser with per-entry normalisation (Adam) steps them differently, so side by
# side with an implementation of the other option the gradients and trajectories are not compared.
SKEW_STORAGE = OpenChoice(
    "skew_storage", "how each skew block is stored for training (§3-4 leave it open)", "equation",
    (Option("packed", "its b(b−1)/2 free entries", "arXiv 2311.06243 §4 ('effective trainable parameters')",
            {"skew_storage": "packed"}, ("ours",)),
     Option("full-blocks", "a full b×b block B, Q = ½(B − Bᵀ)", "the authors' code: peft/tuners/boft/layer.py "
            "cayley_batch (0.5·(data − dataᵀ))", {"skew_storage": "full-blocks"}, ("peft",))),
    affects="gradients")

_BUTTERFLY = ("butterfly2-b8", "butterfly3-b4", "block-num4-m2")  # configs with m > 1 (the main one's id first)

CARD = VariantCard(
    name="boft",
    paper="Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization (Liu, Qiu, Feng, Xiu, Xue, Yu, "
          "Feng, Liu, Heo, Peng, Wen, Black, Weller, Schölkopf, ICLR 2024), §3-4, App. F",
    arxiv="2311.06243",
    equation="W' = W Rᵀ (y = (xR)Wᵀ + b),  R = B̃(d, 2^m) ⋯ B̃(d, 2),  B̃(d, k) = butterfly-permuted blockdiag of "
             "b×b Cayley rotations (I + Q)(I − Q)⁻¹;  Q = 0 at init",
    config={"block_size": 8, "block_num": 0, "n_butterfly_factor": 2},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=_trainable,
    choices=(SKEW_STORAGE,),
    invariants=(
        Invariant("orthogonality_err", "the input map R is orthogonal: max |RᵀR − I|", _orthogonality, _TOL_GRAM),
        Invariant("hyperspherical_energy_rel_err", "W_eff W_effᵀ = W Wᵀ (neuron angles and norms kept), relative",
                  _energy, _TOL_ENERGY),
        Invariant("spectrum_err", "every singular value of R is 1: max |σ(R) − 1|", _spectrum, _TOL_SPECTRUM),
    ),
    bad_inputs=(BadInput({"block_size": 7}, ValueError),                  # divides no zoo d_in (48, 64, 80, 96)
                BadInput({"block_size": 1}, ValueError),
                BadInput({"block_size": 0, "block_num": 0}, ValueError),  # neither set
                BadInput({"block_size": 8, "block_num": 4}, ValueError),  # both set
                BadInput({"n_butterfly_factor": 0}, ValueError),
                BadInput({"n_butterfly_factor": 4}, ValueError),          # b·2^(m−1) = 64 ∤ 48
                BadInput({"block_size": 6}, ValueError)),                 # m = 2: 12 ∤ 64, 80
    # ‖Q_i‖₂ ≈ 0.28 on 8×8 blocks: R far from I (a transposed or reordered product is off by ~‖Q‖)
    perturb={"Q": 0.05},
    config_id="butterfly2-b8",
    config_why="BOFT(m = 2, b = 8), the paper's setting in Tables 1-5 (two butterfly components, 8×8 rotations)",
    configs=(ConfigCase("oft-m1-b8", {"n_butterfly_factor": 1}, "m = 1: BOFT reduces to block-diagonal OFT (§4)"),
             ConfigCase("butterfly3-b4", {"block_size": 4, "n_butterfly_factor": 3},
                        "three butterfly components of 4×4 rotations (widest B̃(d, 8) spans 16 coordinates)"),
             ConfigCase("block-num4-m2", {"block_size": 0, "block_num": 4, "n_butterfly_factor": 2},
                        "the block count instead of the block size (§6.3): b = d_in/4 differs per layer (12, 20)",
                        checks=CONFIG_CHECKS + ("merge", "save_load")),
             SUBJECT_DEFAULTS),
    deviations=(
        Deviation("peft-boft-butterfly-dropped-without-cuda", "layout", "canonical_shape_mismatch", "peft", "xfail",
                  "peft's BOFT silently sets boft_n_butterfly_factor = 1 (warning only) whenever its fbd_cuda extension "
                  "fails to build, i.e. on every CPU run and on a GPU without nvcc/ninja: an m > 1 config becomes plain "
                  "block-diagonal OFT with boft_R (1, d/b, b, b), not the m butterfly components the config asks for",
                  "peft/tuners/boft/layer.py BOFTLayer.update_layer ('if not get_fbd_cuda(): ... "
                  "boft_n_butterfly_factor = 1'), get_fbd_cuda", magnitude=1.0, subjects=("peft",),
                  configs=_BUTTERFLY),
        Deviation("peft-boft-output-scale", "grad_flow", "trainable_non_adapter|base_params_with_grad", "peft", "xfail",
                  "peft's BOFT scales every output by a trainable vector boft_s (d_out, 1), init 1, which the paper's "
                  "BOFT (arXiv 2311.06243 §4: z = (R W⁰)ᵀ x) has not: a trainable tensor outside the rotation "
                  "(one per adapted layer; unmapped, so the grad_flow check counts it as a base parameter with a gradient)", "peft/tuners/boft/layer.py BOFTLayer.update_layer (boft_s = "
                  "nn.Parameter(torch.ones(out_features, 1))), Linear.forward ((result − bias)·boft_s + bias)",
                  magnitude=64, subjects=("peft",)),
        Deviation("peft-boft-full-blocks-count", "grad_flow", "trainable_params", "peft", "xfail",
                  "peft's BOFT trains full b×b blocks boft_R (b² entries, only the skew part ½(B − Bᵀ) acts) where the "
                  "paper counts ½(b − 1)·d·m effective parameters, plus boft_s (d_out per layer)",
                  "peft/tuners/boft/layer.py BOFTLayer.update_layer (boft_R = nn.Parameter(torch.zeros(N, D, b, b))), "
                  "cayley_batch (0.5·(data − dataᵀ))", magnitude=1e5, subjects=("peft",)),
        # the same drop seen from our audit: the init check's second reference (peft's own init) holds boft_R
        # (1, d/b, b, b) for an m > 1 config (measured on every zoo model where the config runs, float32)
        Deviation("peft-boft-butterfly-dropped-without-cuda-init", "init", "peft_canonical_shape_mismatch", "peft",
                  "xfail", "peft's own init for an m > 1 config holds one butterfly component, not m: boft_R "
                  "(1, d/b, b, b) (boft_n_butterfly_factor silently set to 1 without the fbd_cuda extension)",
                  "peft/tuners/boft/layer.py BOFTLayer.update_layer, get_fbd_cuda", magnitude=1.0,
                  subjects=("ours",), configs=_BUTTERFLY),
        peft_linear_only("boft", "peft/tuners/boft/model.py _get_tuner_layer_class (Linear, Conv2d only; "
                                 "_create_new_module raises TypeError otherwise)"),
    ),
    notes="R acts on the input (W' = W Rᵀ), bias unchanged; r and alpha are not read. peft's Cayley map is the "
          "paper's map of −S for its stored skew part S: a storage convention (peft has one branch), mapped as a "
          "layout (Q = −S), not a departure. The multiplicative dropout (§4) is training-only and held at 0. "
          "Side by side with peft the gradients and two-step trajectories are not compared (skew_storage): peft's "
          "trained boft_s then goes unseen there, and is judged by grad_flow (trainable_non_adapter, "
          "base_params_with_grad) and the trainable count.",
)
