"""BOFT mapping onto peft's BOFTConfig / peft.tuners.boft.layer.Linear.

peft forward (layer.py Linear.forward): boft_R.<a> (N, D, b, b) full blocks -> cayley_batch: S = ½(B − Bᵀ),
C = (I − S)(I + S)⁻¹ (solve(I + S, I − S, left=False)) = the paper's Cayley map of −S; per factor i a block
diagonal of the D blocks, conjugated by the permutation boft_P[i] (block_butterfly_perm: in chunks of
b·2^i, the b/2 sub-blocks reordered evens then odds) into M_i = P_i D_i P_iᵀ; M = M_{N−1} ⋯ M_0; then
y = base(x M), and (y − bias)·boft_s + bias. Row form x M with M_i acting on [sub-block j ; sub-block j + k/2]
of each chunk (k = 2^{i+1}) is the paper's B̃(d, 2^{i+1}) with rotation c·k/2 + j (references/paper/boft.py
block_indices), and M = B̃(d, 2^N) ⋯ B̃(d, 2) = R: the paper's product order. So the canonical Q maps onto
boft_R as the skew blocks of −Q (a pure relabelling: peft has one Cayley branch, so its sign is a storage
convention, as in our checkpoint format; OFT's mapping differs because peft's OFT has two branches of
opposite sign behind one tensor). boft_s (d_out, 1), trainable, init 1, is not part of the paper's BOFT:
left unmapped it stays at 1 in every state the audit sets.
Without the fbd_cuda extension (any CPU run, or a GPU without nvcc/ninja) update_layer silently sets
boft_n_butterfly_factor = 1 (layer.py update_layer, get_fbd_cuda): the bridge refuses m > 1 there.
"""
from __future__ import annotations

from ._core import (NEGATED_PACKED_SKEW, TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping,
                    exact_target_regex, targeting_fields)


def _fields(cfg) -> dict:
    bs, bn = int(cfg.get("block_size", 8) or 0), int(cfg.get("block_num", 0) or 0)
    return {"boft_block_size": bs, "boft_block_num": bn,
            "boft_n_butterfly_factor": int(cfg.get("n_butterfly_factor", 1)), "boft_dropout": 0.0}


def fbd_cuda_available() -> bool:
    """Whether peft's BOFT keeps more than one butterfly factor here (its CUDA extension builds)."""
    import warnings

    from peft.tuners.boft import layer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(layer.get_fbd_cuda())


def _make_boft(cfg, names, states, infos):
    from peft import BOFTConfig

    if int(cfg.get("n_butterfly_factor", 1)) > 1 and not fbd_cuda_available():
        raise BridgeUnsupported("peft's BOFT sets boft_n_butterfly_factor to 1 where its fbd_cuda extension does not "
                                "build (peft/tuners/boft/layer.py update_layer): no m > 1 peft layer to hold this state")
    return BOFTConfig(**_fields(cfg), init_weights=True, target_modules=exact_target_regex(names)), names


def _subject_boft(cfg, targets, conv1d, make):
    return make("BOFTConfig", **_fields(cfg), init_weights=True, **targets)


def _subject_defaults(defaults) -> dict:
    d = defaults("BOFTConfig")
    return {"block_size": d["boft_block_size"], "block_num": d["boft_block_num"],
            "n_butterfly_factor": d["boft_n_butterfly_factor"]}


BOFT = VariantMapping(
    variant="boft",
    peft_config_class="peft.BOFTConfig",
    peft_layer_class="peft.tuners.boft.layer.Linear",
    tensors=(TensorMap("Q", "boft_R.default", NEGATED_PACKED_SKEW,
                       note="(m, d_in/b, b, b) full blocks; only their skew part ½(B − Bᵀ) acts, with the sign "
                            "flipped by cayley_batch; written as the skew blocks of −Q; saved as ...boft_R"),),
    config=(ConfigField("block_size", "boft_block_size", "copied (0 when block_num is set)"),
            ConfigField("block_num", "boft_block_num", "copied (0 when block_size is set); b = d_in / block_num"),
            ConfigField("n_butterfly_factor", "boft_n_butterfly_factor",
                        "copied (peft drops it to 1 without its fbd_cuda extension)"),
            ConfigField(None, "boft_dropout", "fixed 0.0 (multiplicative dropout, training only)", "stochastic"),
            ConfigField(None, "init_weights", "True (Q = 0, boft_s = 1); Q overwritten by the state", "init"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        "placement"),
            ConfigField(None, "fan_in_fan_out", "False: peft's BOFT refuses transformers Conv1D", "layout"),
            ConfigField(None, "bias", "fixed 'none' (base biases stay frozen)", "placement"),
            *targeting_fields(*TARGETING)),
    init="Q = 0 (every butterfly component I) and boft_s = 1; Q overwritten by the given state, boft_s left at 1",
    notes=("input side: y = base(x M), M = B̃(d, 2^m) ⋯ B̃(d, 2) (layer.py Linear.forward, get_delta_weight)",
           "Cayley sign: cayley_batch solves X(I + S) = I − S, the paper's map of −S: stored as −Q (a layout)",
           "boft_s (d_out, 1): a trainable output scale the paper has not (unmapped, stays 1)",
           "full b×b blocks boft_R: b² trainable entries per block where the skew Q has b(b−1)/2",
           "without fbd_cuda (CPU): boft_n_butterfly_factor silently 1 (warning only; layer.py update_layer)",
           "torch.nn.Linear only: transformers Conv1D raises TypeError (model.py _get_tuner_layer_class)"),
    make_config=_make_boft,
    peft_exports=("BOFTConfig",),
    since="0.11.0",  # BOFT came in peft 0.11.0 (#1326, merged after 0.10.0's release)
    subject_config=_subject_boft,
    subject_defaults=_subject_defaults,
)
