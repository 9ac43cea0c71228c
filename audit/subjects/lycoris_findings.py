"""LyCORIS's departures from the papers, as the audit measures them on the default zoo: the ``lycoris``
subject's declared deviations (audit/subjects/lycoris.py), each with its source line in lycoris-lora 4.1.3
and the paper's formula; tests/test_lycoris_subject.py reproduces each against the library itself."""
from __future__ import annotations

from ..cards import Deviation
from .lycoris import ALGOS

# -- LyCORIS's departures, as the audit measures them ---------------------------------------------------
# Magnitudes: the worst value over the default zoo (qwen3, qwen2, llama, mlp, gpt2, phi3), float32 and
# bfloat16, seeds 0-4 (python -m audit run --subject lycoris --seed N), with headroom (about 2x); each is
# reproduced against the library itself, without the audit, in tests/test_lycoris_subject.py.
LINE = {  # LyCORIS source lines (lycoris-lora 4.1.3), relative to the installed package
    "linear_only": "lycoris/modules/base.py:34-41 (is_supported_linear_module: isinstance(module, nn.Linear)); "
                   "lycoris/wrapper.py:326-350 (create_single_module returns None for any other class, silently)",
    "load": "lycoris/wrapper.py:595-608 (load_weights: load_state_dict(strict=False), the key lists returned, not raised)",
    "onfly_merge": "lycoris/modules/base.py:420-445 (onfly_merge: no merged flag, the cache overwritten on each call)",
    "onfly_restore": "lycoris/modules/base.py:430 (cached_org_weight = org_weight.data.cpu(): the same storage on CPU), "
                     ":435 and :331 (the merged weight copied into it in place), :447-454 (onfly_restore copies it back)",
    "kwargs": "lycoris/wrapper.py:257 and :303-324 (LycorisNetwork(**kwargs) passed to every module), "
              "lycoris/modules/locon.py:56, loha.py:49, lokr.py:67, diag_oft.py:54, ia3.py:50 (**kwargs, unread)",
    "rank": "lycoris/wrapper.py:333 (create_single_module: `... and lora_dim > 0`, else no module and no error)",
    "alpha0": "lycoris/wrapper.py:335 (alpha = alpha or self.alpha) and lycoris/modules/loha.py:132 "
              "(alpha = lora_dim if alpha is None or alpha == 0)",
    "alphainf": "lycoris/modules/loha.py:132-140 (alpha taken as given: scale = alpha / r, no finiteness check)",
    "factor": "lycoris/functional/general.py:17-59 (factorization: factor 0 stops at (1, dim), a negative factor "
              "means no cap; neither is refused), called from lycoris/modules/lokr.py:144-145",
    "oft_blocks": "lycoris/modules/diag_oft.py:69-77 (block_size, block_num = factorization(out_dim, lora_dim): blocks "
                  "over d_out, the requested size swapped or replaced when it does not fit)",
    "oft_side": "lycoris/modules/diag_oft.py:69-77, :152-156 and lycoris/functional/diag_oft.py:50-64 "
                "(einsum 'k n m, k n ... -> k m ...': W′ = RᵀW, blocks over the output rows)",
    "loha_merge": "lycoris/modules/loha.py:196-219 (get_weight already multiplies by gamma = scale) and :230-244 "
                  "(get_diff_weight multiplies by scale again; get_merged_weight, used by merge_to and onfly_merge)",
    "lokr_merge": "lycoris/modules/lokr.py:359-369 (get_weight: kron_weight(..., scale=self.scale)) and :381-395 "
                  "(get_diff_weight multiplies by scale again; get_merged_weight, used by merge_to and onfly_merge)",
    "ia3_bias": "lycoris/modules/ia3.py:9-14 (_ia3_weight scales W's rows only), :128-130 (get_merged_weight returns "
                "bias None) and :159-168 (forward: base(x) + x (diag(1 + w) W − W)ᵀ, the bias left as is)",
    "dora_eps": "lycoris/functional/general.py:117-139 (_weight_decompose: ‖W + ΔW‖_row + torch.finfo(dtype).eps)",
}
METHODS = tuple(ALGOS)
RANKED = ("lora", "dora", "loha", "lokr")
# unmerge_weight_rel_err after the merge check's merge, second merge and unmerge: ‖2ΔW′‖/‖W‖ of each method's
# perturbed state (seeds 0-4: lora ≤ 0.644, dora ≤ 0.565, loha ≤ 4.20, lokr ≤ 21.4, ia3 ≤ 0.270, ia3_ff ≤ 0.239)
UNMERGE = {"lora": 1.5, "dora": 1.5, "loha": 8.0, "lokr": 40.0, "oft": 1.0, "ia3": 0.6, "ia3_ff": 0.6}


def _dev(id_: str, check: str, metric: str, reason: str, source: str, magnitude: float | None = None,
         kind: str = "xfail", tolerance: float | None = None, **where) -> Deviation:
    return Deviation(id_, check, metric, "lycoris", kind, reason, source, tolerance=tolerance, magnitude=magnitude,
                     subjects=("lycoris",), **where)


def _common(method: str) -> tuple[Deviation, ...]:
    """What every LyCORIS method shares: its layer support, its loader, its on-the-fly merge, its options."""
    out = [
        _dev(f"lycoris-{method}-linear-only", "placement", "refused_target_fraction",
             "LyCORIS adapts torch.nn.Linear and Conv1d/2d/3d only: GPT-2's transformers Conv1D projections (weight "
             "stored (d_in, d_out)) get no module, silently (the network logs 'No LyCORIS modules were created'); the "
             "paper adapts every dense projection y = Wx + b, whatever its storage", LINE["linear_only"],
             magnitude=1.0, models=("gpt2",)),
        _dev(f"lycoris-{method}-load-missing-keys", "save_load", "missing_key_raises",
             "LycorisNetwork.load_weights loads a checkpoint that lacks a tensor without an error: the module keeps "
             "its fresh init for it (or, for the alpha buffer, a value its forward never reads: s = α/r is fixed at "
             "construction) and the missing keys are only returned; a checkpoint that cannot restore the state the "
             "formula reads (e.g. A, B of W + s·BA) must be refused", LINE["load"], magnitude=0.0),
        _dev(f"lycoris-{method}-load-unexpected-keys", "save_load", "extra_key_raises",
             "LycorisNetwork.load_weights loads a checkpoint with a tensor that matches no module without an error "
             "(the unexpected keys are only returned): a checkpoint of another model or method is half-loaded "
             "silently", LINE["load"], magnitude=0.0),
        _dev(f"lycoris-{method}-merge-twice", "merge", "merge_twice",
             "onfly_merge has no merged state: a second call writes W′ = W_merged + ΔW, the adapter twice, where the "
             "paper's merged weight is W′ = W + ΔW once (a second merge must be refused or change nothing)",
             LINE["onfly_merge"], magnitude=0.0),
        _dev(f"lycoris-{method}-onfly-restore-noop", "merge", "unmerge_weight_rel_err",
             "onfly_restore does not give the original weight back on CPU: onfly_merge caches org_weight.data.cpu(), "
             "which for a CPU tensor is the tensor itself, then copies the merged weight into it in place, so the "
             "'restore' copies the merged weight onto itself; unmerge must give W back (up to the rounding of "
             "W′ − ΔW). Measured after the merge check's two merges: ‖2ΔW‖/‖W‖", LINE["onfly_restore"],
             magnitude=UNMERGE[method]),
        _dev(f"lycoris-{method}-unknown-options-ignored", "robustness", "raises[bogus_field=1]",
             "LycorisNetwork passes every keyword it does not know to the module classes, which take **kwargs and "
             "never read them: a misspelt or unknown option (here bogus_field=1) is accepted silently, so the "
             "network computes another formula than the one asked for (create_lycoris likewise drops what is not on "
             "its whitelist: weight_decompose=True there gives plain LoRA, W + s·BA, not DoRA)",
             LINE["kwargs"], magnitude=0.0),
    ]
    if method in RANKED:
        out += [
            _dev(f"lycoris-{method}-rank-zero-accepted", "robustness", "raises[r=0]",
                 "linear_dim = 0 (r = 0: the paper's r ≥ 1) is not refused: create_single_module creates no module "
                 "for any layer and the network is empty", LINE["rank"], magnitude=0.0),
            _dev(f"lycoris-{method}-rank-type-unchecked", "robustness", "raises[r='4']",
                 "linear_dim = '4' is not validated: it reaches `lora_dim > 0` and raises Python's own TypeError "
                 "(\"'>' not supported between instances of 'str' and 'int'\"), which names neither the option nor "
                 "the value", LINE["rank"], magnitude=0.0),
        ]
    return tuple(out)


_S2 = ("LoHa's merge applies the scale twice: get_weight returns s·(w1_a w1_b) ⊙ (w2_a w2_b) and get_diff_weight "
       "multiplies by s again, so merge_to / onfly_merge write W + s²·(w1_a w1_b) ⊙ (w2_a w2_b) where the paper (and "
       "LyCORIS's own forward) has W′ = W + s·(w1_a w1_b) ⊙ (w2_a w2_b), s = α/r. Right only where s = 1 (α = r); "
       "the main config has s = 2")
_S2_KR = ("LoKr's merge applies the scale twice: get_weight returns γ·(W₁ ⊗ W₂) and get_diff_weight multiplies by γ "
          "again, so merge_to / onfly_merge write W + γ²·(W₁ ⊗ W₂) where the paper (and LyCORIS's own forward) has "
          "W′ = W + γ·(W₁ ⊗ W₂), γ = α/r. Right only where γ = 1 (α = r, or both factors full); the main config has γ = 2")
_IA3 = ("(IA)³ rescales the activation, y = l ⊙ (Wx + b) (arXiv 2205.05638 §3.3), bias included; LyCORIS's default "
        "(weight-rebuild) path computes y = diag(l) W x + b with l = 1 + w: the bias is not scaled")
_OFT = ("LyCORIS's diag-OFT rotates the output side: blocks R_i over d_out and W′ = Rᵀ W (y = Rᵀ(Wx) + b), where "
        "OFT (arXiv 2306.07280 §3) rotates the input, W′ = W Rᵀ (y = (xR)Wᵀ + b) with R = ⊕ R_i over d_in, so its Q "
        "has d_out/b rows where the paper's has d_in/b; and the block size is factorization(d_out, lora_dim), "
        "min(lora_dim, d_out/lora_dim) when lora_dim divides d_out (6 on a 48-wide output for block_size 8), so "
        "no zoo model's every layer fits the paper's layout (any non-square layer shows it)")

DEVIATIONS: dict[str, tuple[Deviation, ...]] = {m: _common(m) for m in METHODS}
DEVIATIONS["loha"] += (
    _dev("lycoris-loha-merge-scale-squared", "merge", "merged_weight_rel_err_vs_paper|merged_vs_unmerged_logits_rel_err",
         _S2 + ". Measured (seeds 0-4): merged weight off by 0.23-0.72 relative, merged logits by 0.09-0.63",
         LINE["loha_merge"], magnitude=1.5, configs=("alpha8-r4",)),
    _dev("lycoris-loha-alpha-zero-accepted", "robustness", "raises[alpha=0.0]",
         "alpha = 0 is read as alpha = r (s = 1), silently: the paper's s = α/r would be 0", LINE["alpha0"],
         magnitude=0.0),
    _dev("lycoris-loha-alpha-inf-accepted", "robustness", "raises[alpha=inf]",
         "alpha = inf is accepted: s = α/r = inf and every output non-finite", LINE["alphainf"], magnitude=0.0),
)
DEVIATIONS["lokr"] += (
    _dev("lycoris-lokr-merge-scale-squared", "merge", "merged_weight_rel_err_vs_paper|merged_vs_unmerged_logits_rel_err",
         _S2_KR + ". Measured (seeds 0-4): merged weight off by 0.60-0.99 relative, merged logits by 0.47-1.99",
         LINE["lokr_merge"], magnitude=4.0, configs=("r2-alpha4",)),
    _dev("lycoris-lokr-factor-zero-accepted", "robustness", "raises[decompose_factor=0]",
         "factor = 0 is accepted: factorization(d, 0) returns (1, d), a Kronecker factor of one row and column",
         LINE["factor"], magnitude=0.0),
    _dev("lycoris-lokr-factor-negative-accepted", "robustness", "raises[decompose_factor=-3]",
         "factor = -3 is accepted: any negative factor means 'no cap' (the balanced factorisation), not only -1",
         LINE["factor"], magnitude=0.0),
)
DEVIATIONS["oft"] += (
    _dev("lycoris-oft-output-side", "layout", "canonical_shape_mismatch", _OFT, LINE["oft_side"], magnitude=1.0),
    _dev("lycoris-oft-block-size-7-accepted", "robustness", "raises[block_size=7]",
         "block_size 7 (dividing no zoo width) is accepted: factorization(d_out, 7) silently picks another block size",
         LINE["oft_blocks"], magnitude=0.0),
    _dev("lycoris-oft-block-size-1-accepted", "robustness", "raises[block_size=1]",
         "block_size 1 is accepted: 1×1 blocks, whose skew part is 0, an adapter that can never change the layer",
         LINE["oft_blocks"], magnitude=0.0),
)
_BIASED = ("mlp", "qwen2")  # the zoo models whose (IA)³ targets have a bias (gpt2's Conv1D is refused)
DEVIATIONS["ia3"] += (
    _dev("lycoris-ia3-bias-unscaled", "paper_parity", "output_rel_err|logits_rel_err_vs_merged",
         _IA3 + ". Measured (float32, seeds 0-4): layer outputs off by 0.014-0.042 relative, logits by 0.004-0.045",
         LINE["ia3_bias"], magnitude=0.1, models=_BIASED, dtypes=("float32",)),
    _dev("lycoris-ia3-bias-unscaled-bf16", "paper_parity", "output_rel_err|logits_rel_err_vs_merged",
         _IA3 + "; in bfloat16 that difference (≤ 0.045) is of the size of the formula's own rounding spread "
         "(tolerance 0.03-0.07), so it shows at some seeds only: judged against 0.1", LINE["ia3_bias"],
         kind="tolerance", tolerance=0.1, models=_BIASED, dtypes=("bfloat16",)),
    _dev("lycoris-ia3-bias-unscaled-grad", "paper_parity", "grad_rel_err[l]",
         _IA3 + ", so ∂L/∂l lacks the bias term b ⊙ ∂L/∂y. Measured (seeds 0-4, both dtypes): 0.12-0.36 relative",
         LINE["ia3_bias"], magnitude=0.75, models=_BIASED),
    _dev("lycoris-ia3-bias-unscaled-vs-peft", "peft_parity",
         "logits_rel_err|trajectory_logits_rel_err|trajectory_state_rel_err",
         _IA3 + " (peft scales it). Measured side by side with peft holding the same l (float32, seeds 0-4): logits "
         "off by 0.004-0.045 relative, also after two Adam steps, the state after them by ≤ 6.3e-4",
         LINE["ia3_bias"], magnitude=0.1, models=_BIASED, dtypes=("float32",)),
    _dev("lycoris-ia3-bias-unscaled-vs-peft-bf16", "peft_parity", "logits_rel_err",
         _IA3 + " (peft scales it); in bfloat16 the logits difference (≤ 0.045) is of the size of the rounding "
         "spread, so it shows at some seeds only: judged against 0.1", LINE["ia3_bias"], kind="tolerance",
         tolerance=0.1, models=_BIASED, dtypes=("bfloat16",)),
    _dev("lycoris-ia3-bias-unscaled-vs-peft-grad", "peft_parity", "grad_rel_err[l]",
         _IA3 + " (peft scales it), so the model-level gradient of l differs. Measured (seeds 0-4, both dtypes): "
         "0.12-0.77 relative", LINE["ia3_bias"], magnitude=1.5, models=_BIASED),
    _dev("lycoris-ia3-bias-unscaled-merge", "merge", "merged_bias_rel_err_vs_paper",
         _IA3 + "; its merge leaves the bias too (get_merged_weight returns no bias), where the paper's merged bias "
         "is l ⊙ b. Measured (seeds 0-4, both dtypes): 0.096-0.127 relative", LINE["ia3_bias"], magnitude=0.25,
         models=_BIASED),
)
_EPS = ("DoRA (arXiv 2402.09353 §4.1 eq. 5): W′ = m ⊙ V / ‖V‖_row, V = W + s·BA; LyCORIS divides by ‖V‖_row + ε "
        "(ε = torch.finfo(float32).eps = 1.19e-7), which changes every row of W′ by a relative ε/‖V‖_row: ≤ 1.03e-6 "
        "on the zoo (smallest row norm 0.116), the size of the float32 tolerances (0.7-2.1e-6), so it shows at some "
        "seeds only (identity at init: 1.55e-6 against 1.45e-6; merged weight 7.25e-7 against 7.24e-7); judged "
        "against 4e-6 (the rows' own tolerance plus ε/min‖V‖, with headroom); bfloat16 DoRA does not run (the "
        "decomposed weight comes back in float32: lycoris/modules/locon.py:339-347)")
DEVIATIONS["dora"] += tuple(
    _dev(f"lycoris-dora-norm-eps{suffix}", check, metric, _EPS, LINE["dora_eps"], kind="tolerance", tolerance=4e-6,
         dtypes=("float32",))
    for suffix, check, metric in (("", "paper_parity", "*"),
                                  ("-identity", "identity_at_init", "layer_max_rel_err|logits_rel_err"),
                                  ("-merge", "merge", "merged_weight_rel_err_vs_paper"),
                                  ("-magnitude", "properties", "row_norm_vs_magnitude_rel_err")))
