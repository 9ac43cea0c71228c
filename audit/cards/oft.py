"""Card: OFT (Qiu et al., arXiv 2306.07280), block-diagonal Cayley rotation of the layer input."""
import torch

from references.paper import oft as ref

from ..cards import CONFIG_CHECKS, SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, VariantCard, peft_linear_only

U32, U16 = 2.0 ** -24, 2.0 ** -8  # unit round-off of float32, of bfloat16 (8 significand bits)


def _gram_err(m: torch.Tensor) -> float:
    return float((m.t() @ m - torch.eye(m.shape[0], dtype=m.dtype)).abs().max())


def _orthogonality(p) -> float:
    """max |MᵀM − I| of the subject's input map x ↦ x M (M = R: orthogonal, §3)."""
    return _gram_err(p.input_map)


def _energy(p) -> float:
    """max |W_eff W_effᵀ − W Wᵀ| / max |W Wᵀ|: the pairwise angles and norms of the output neurons
    (hyperspherical energy, §3) are unchanged by an orthogonal R acting on the input."""
    w_eff, _ = p.effective
    gram = p.weight @ p.weight.t()
    return float((w_eff @ w_eff.t() - gram).abs().max() / gram.abs().max())


def _spectrum(p) -> float:
    """max |σ(M) − σ_stated| over the subject's whole input map: 1 for the exact Cayley map; for the
    Cayley–Neumann series |1 − (iθ)^{t−1}| from the subject's own Q (references/paper/oft.py)."""
    got = torch.linalg.svdvals(p.input_map).sort().values
    want = ref.stated_singular_values(ref.shared(p.state["Q"], p.cfg, p.weight.shape[1]), p.cfg)
    return float((got - want).abs().max())


def _expansion(p) -> float:
    """σ_max(M) − 1: the input map never stretches a vector (exact: 0; Neumann t = 5: 1 − θ⁴ ≤ 1)."""
    return float(torch.linalg.svdvals(p.input_map).max() - 1)


# Tolerances (exact Cayley, the main config). float32: R comes from a solve with I − Q_i normal and
# cond ≤ √(1 + θ²) ≤ √2, so each entry of M is off by a few u, and a Gram entry sums b ≤ 32 products:
# 8 · 64 · u (the factor 8 of audit/numerics.py over a b-term sum, doubled for the solve).
# bfloat16: the probe reads M through a bf16 layer, so each entry is rounded once, |E_ij| ≤ u|M_ij|; a Gram
# entry then moves by ≤ 2·Σ_k|M_ki||E_kj| ≤ 2u (unit columns, Cauchy–Schwarz; measured ≈ u), the singular
# values by ≤ ‖E‖_F of a block ≤ u·√b ≤ u·√32: we allow twice each bound.
# Energy: W_eff = y(I) − y(0) carries the rounding of M and of x R Wᵀ + b (each ≤ u relative, the zoo's
# |b| ≤ 0.1 well below the rotated terms), entering the Gram on both sides, and the ratio sums d_in ≤ 128
# products: 8 · 128 · u in float32, 4u in bfloat16 (measured ≈ u).
_TOL_GRAM = {"float32": 8 * 64 * U32, "bfloat16": 4 * U16}
_TOL_ENERGY = {"float32": 8 * 128 * U32, "bfloat16": 4 * U16}
_TOL_SPECTRUM = {"float32": 8 * 64 * U32, "bfloat16": 2 * U16 * 32 ** 0.5}

# Cayley–Neumann corner: R_i = C_i(I − Q_i^{t−1}) (C_i orthogonal), t = 5: ‖RᵀR − I‖₂ = 1 − (1 − θ⁴)²,
# θ = max‖Q_i‖₂. At perturb std 0.05 on 8×8 blocks θ over the mlp's 32 blocks is 0.28 typical, 0.36
# the worst of 3000 draws; 0.05 covers θ ≤ 0.397 (and bounds the energy ratio too: |w_i(RᵀR − I)w_jᵀ| ≤
# ‖w_i‖‖w_j‖·‖RᵀR − I‖₂ ≤ max|WWᵀ|·‖RᵀR − I‖₂).
NEUMANN_REMAINDER = 0.05

CARD = VariantCard(
    name="oft",
    paper="Controlling Text-to-Image Diffusion by Orthogonal Finetuning (Qiu, Liu, Feng, Xue, Feng, Liu, Weller, "
          "Schölkopf, NeurIPS 2023), §3-4; Cayley–Neumann series from OFTv2 (arXiv 2506.19847)",
    arxiv="2306.07280",
    equation="W' = W Rᵀ (y = (xR)Wᵀ + b),  R = ⊕ R_i,  R_i = (I + Q_i)(I − Q_i)⁻¹,  Q_i skew;  Q = 0 at init",
    config={"block_size": 8, "use_cayley_neumann": False, "num_neumann_terms": 5},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=lambda d_in, d_out, c: ((1 if c.get("block_share") else d_in // c["block_size"])
                                                * c["block_size"] * (c["block_size"] - 1) // 2),
    invariants=(
        Invariant("orthogonality_err", "the input map R is orthogonal: max |RᵀR − I|", _orthogonality, _TOL_GRAM),
        Invariant("hyperspherical_energy_rel_err", "W_eff W_effᵀ = W Wᵀ (neuron angles and norms kept), relative",
                  _energy, _TOL_ENERGY),
        Invariant("spectrum_vs_stated_err", "singular values of R equal the stated ones (1; Neumann: |1 − (iθ)^{t−1}|)",
                  _spectrum, _TOL_SPECTRUM),
        Invariant("expansion", "σ_max(R) − 1 ≤ 0: R never stretches (Neumann t = 5 contracts, 1 − θ⁴)",
                  _expansion, _TOL_SPECTRUM),
    ),
    bad_inputs=(BadInput({"block_size": 7}, ValueError),     # divides no zoo d_in (48, 64, 80, 96)
                BadInput({"block_size": 1}, ValueError),
                BadInput({"num_neumann_terms": 1}, ValueError),
                BadInput({"use_cayley_neumann": "yes"}, TypeError)),
    # ‖Q_i‖₂ ≈ 0.28 on 8×8 blocks: the Neumann series converges (needs < 1) with a remainder θ⁴ ≈ 6e-3
    # far above rounding, and a transposed rotation is off by ~2‖Q‖ (relative 0.3-1)
    perturb={"Q": 0.05},
    config_id="cayley-b8",
    config_why="the paper's exact Cayley transform, 8×8 blocks (divides every zoo width)",
    configs=(ConfigCase("neumann5-b8", {"use_cayley_neumann": True, "num_neumann_terms": 5},
                        "OFTv2's Cayley–Neumann series with peft's default 5 terms (contracts: σ = 1 − θ⁴)"),
             ConfigCase("coft", {"coft": True, "eps": 0.1}, "constrained OFT (COFT): each skew block projected into "
                        "‖Q_i‖_F ≤ ε/√n before every forward (ε = 0.1: active on the perturbed states, ‖Q_i‖_F ≈ 0.4, "
                        "yet R far from I)", checks=CONFIG_CHECKS + ("merge", "save_load")),
             ConfigCase("block-share", {"block_share": True}, "peft's block_share: one rotation block R_0 on every "
                        "diagonal position (Q holds one row)", checks=CONFIG_CHECKS + ("merge", "save_load")),
             SUBJECT_DEFAULTS),
    peft_config={"use_cayley_neumann": True},
    peft_config_reason="peft's exact branch computes (I − Q)(I + Q)⁻¹, the transpose of the paper's R (declared "
                       "where peft is the subject); side by side both run the Cayley–Neumann series, where peft "
                       "follows the paper's sign",
    deviations=(
        # peft before 0.16 (tuners/oft/layer.py before #2575): full b×b blocks oft_r (only their skew part acts)
        # and a trainable output scale oft_s (d_out, 1), init 1, which the paper's OFT has not. The subject reads
        # Q off the blocks (audit/subjects/peft.py OLDER_LAYOUTS); oft_s stays at 1 in every state the audit
        # sets, so only the trainable set shows it: one oft_s per adapted layer (at most 64 on the zoo) and a
        # total count above the card's (the blocks' symmetric halves plus d_out per layer; bounded by the zoo's
        # largest total, a magnitude on a total being no measure of the departure)
        Deviation("peft-oft-full-blocks-and-scale", "grad_flow", "trainable_non_adapter|base_params_with_grad",
                  "peft", "xfail", "peft < 0.16 OFT scales every output by a trainable vector oft_s (init 1) the "
                  "paper's OFT (arXiv 2306.07280 §3) has not: extra trainable tensors outside the rotation",
                  "peft v0.15.2 tuners/oft/layer.py update_layer (oft_s = nn.Parameter(out_features, 1)), forward "
                  "(rotated_weight * oft_scale)", magnitude=64, subjects=("peft",), releases="<0.16.0"),
        Deviation("peft-oft-full-blocks-count", "grad_flow", "trainable_params", "peft", "xfail",
                  "peft < 0.16 OFT trains full b×b blocks (b² entries where the skew-symmetric Q has b(b−1)/2) and "
                  "oft_s (d_out per layer): more trainable entries than the paper's parametrisation",
                  "peft v0.15.2 tuners/oft/layer.py update_layer (oft_r = nn.Parameter(r, b, b)), _cayley_batch "
                  "(0.5·(data − dataᵀ))", magnitude=1e5, subjects=("peft",), releases="<0.16.0"),
        # measured on the toy MLP, float32, seed 0: logits 2.4e-7, tensors 1.9e-9 (a few ulps of the state)
        Deviation("peft-oft-coft-reprojects", "save_load", "logits_max_abs_diff|adapter_tensors_max_abs_diff", "peft",
                  "xfail", "peft's COFT projects Q in place in every forward and its test ‖Q_i‖ ≤ ρ fails by rounding "
                  "on a block it already projected onto the radius, so each forward rescales it again: a reloaded "
                  "adapter differs from the saved one by a few ulps (the projection is not idempotent)",
                  "peft/tuners/oft/layer.py OFTRotationModule.forward (self.weight.copy_(self._project_batch(...))), "
                  "_project_batch (mask = norm_diff <= eps)", magnitude=1e-5, subjects=("peft",), configs=("coft",),
                  releases=">=0.16.0"),
        Deviation("peft-oft-exact-cayley-transposed", "paper_parity",
                  "output_rel_err|input_grad_rel_err|grad_rel_err[Q]|logits_rel_err_vs_merged", "peft", "xfail",
                  "peft's exact Cayley branch (use_cayley_neumann=False) solves X(I + Q) = I − Q, i.e. R = (I − Q)(I + "
                  "Q)⁻¹ = R_paper(−Q) = R_paperᵀ: the inverse rotation of the paper's (I + Q)(I − Q)⁻¹, and of its own "
                  "Neumann branch, for the same weights. Measured (default zoo, both dtypes, seeds 0-2; ‖Q_i‖₂ ≈ 0.3): "
                  "outputs and input gradients off by a relative 0.50-0.58, logits vs merged 0.19-0.63; the gradient "
                  "w.r.t. Q is that of R(−Q), to first order −g, so its relative error is 2 + O(‖Q‖) (measured "
                  "1.91-2.03); declared up to 2.5",
                  "peft/tuners/oft/layer.py:149-154 (_cayley_batch, torch.linalg.solve(I + Q, I − Q, left=False))",
                  magnitude=2.5, subjects=("peft",), configs=("cayley-b8", "block-share", "coft")),
        Deviation("peft-oft-exact-cayley-transposed-merge", "merge", "merged_weight_rel_err_vs_paper", "peft", "xfail",
                  "the same transposed exact Cayley rotation in peft's merged weight: merge computes what peft's forward "
                  "does (W R(−Q), the merged and unmerged logits agree), not the paper's W R(Q). Measured (default zoo, "
                  "both dtypes, seed 0): off by a relative 0.51-0.53, as its outputs; declared up to 1.0",
                  "peft/tuners/oft/layer.py:149-154 and the merge through get_delta_weight", magnitude=1.0,
                  subjects=("peft",), configs=("cayley-b8", "block-share", "coft")),
        # measured 11.0 (toy MLP, float32, seed 0, peft 0.15.2, ε = 0.1): the looser radius leaves Q unprojected
        Deviation("peft-oft-old-coft-radius", "peft_parity", "trajectory_state_rel_err", "peft", "xfail",
                  "peft < 0.16 COFT bounds each full block B (not its skew part) by ε·⌈d_out/r⌉²/√r: at the same ε a "
                  "radius ⌈d_out/r⌉² times wider, so where the paper's projection acts it does not, and the states "
                  "after two steps part", "peft v0.15.2 tuners/oft/layer.py update_layer (self.eps = eps * "
                  "ceil(out_features / r)²), _project_batch", magnitude=20.0, subjects=("peft",), configs=("coft",),
                  releases="<0.16.0"),
        Deviation("peft-oft-exact-cayley-transposed-vs-ours", "peft_parity",
                  "logits_rel_err|grad_rel_err[Q]|trajectory_logits_rel_err|trajectory_state_rel_err", "peft", "xfail",
                  "the same transposed exact Cayley rotation, side by side with ours holding peft's Q (default zoo, both "
                  "dtypes, seeds 0-2): logits off by a relative 0.19-0.63 (also after two Adam steps), the states after "
                  "them by 0.03-0.05, the Q gradient by 1.71-1.97 (its sign flips to first order); declared up to 2.5",
                  "peft/tuners/oft/layer.py:149-154", magnitude=2.5, subjects=("peft",), configs=("cayley-b8", "block-share", "coft")),
        Deviation("oftv2-neumann-not-orthogonal", "properties", "orthogonality_err|hyperspherical_energy_rel_err",
                  "paper", "tolerance",
                  "OFTv2's Cayley–Neumann series truncates (I − Q)⁻¹: R = C(I − Q^{t−1}) with C the exact rotation, "
                  "orthogonal only up to the remainder; with 5 terms R contracts (singular values 1 − θ⁴ ≤ 1, "
                  "checked exactly by spectrum_vs_stated_err and expansion), so RᵀR and W_eff W_effᵀ fall short of I "
                  "and W Wᵀ by ≤ 1 − (1 − θ⁴)² (≈ 0.012 at the perturbed state, θ = max‖Q_i‖₂ ≈ 0.28)",
                  "arXiv 2506.19847 (Cayley–Neumann parameterization); peft/tuners/oft/layer.py:134-147",
                  tolerance=NEUMANN_REMAINDER, configs=("neumann5-b8",)),
        Deviation("peft-oft-block-size-silently-changed", "layout", "canonical_shape_mismatch", "peft", "xfail",
                  "peft's default oft_block_size = 32 divides neither of the toy MLP's input widths (48, 80): peft "
                  "replaces it by a nearby divisor (24, 40) with only a warning, so its Q has a shape the requested "
                  "block size cannot give; ours refuses such a block size naming block_size",
                  "peft/tuners/oft/layer.py:421-434 (update_layer) and :490-508 (adjust_oft_parameters)",
                  magnitude=1.0, models=("mlp",), subjects=("peft",), configs=("defaults",)),
        peft_linear_only("oft", "peft/tuners/oft/model.py:30-41, 141-145 (_create_new_module: Linear, Conv2d, "
                                "Embedding only; TypeError otherwise)"),
    ),
    notes="R acts on the input (W' = W Rᵀ), bias unchanged. OFT has no rank or scale: r and alpha are not read. "
          "peft's module_dropout is built but never applied (layer.py:414-419); its Neumann coefficients for "
          "t = 2, 3 (I + 2Q; t = 3 repeats t = 4) are not the series (I + Q)Σ_{k≤t−2}Qᵏ that ours uses; neither "
          "is in an audited config.",
)
