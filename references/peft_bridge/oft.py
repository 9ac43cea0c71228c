"""OFT mapping onto peft's OFTConfig / peft.tuners.oft.layer.Linear (OFTRotationModule, peft >= 0.16).

peft forward (layer.py Linear.forward -> OFTRotationModule.forward): x reshaped to (..., r, b), each block
x_blk <- x_blk R_i (einsum "...rk,rkc->...rc"), then the base layer: W_eff = W R^T, bias unchanged.
R_i from oft_R.<adapter>.weight (r, b(b-1)/2) through Q[rows, cols] = vec, Q - Q^T (rows, cols = triu_indices;
non-persistent buffers), then either the Cayley-Neumann series I + 2Q + ... + 2Q^{t-2} + Q^{t-1}
(use_cayley_neumann, the paper's sign) or the exact solve (I - Q)(I + Q)^{-1} (the paper's R transposed).
The canonical Q is peft's vector as is.
"""
from __future__ import annotations

from ._core import ConfigField, TensorMap, VariantMapping, exact_target_regex


def _fields(cfg) -> dict:
    return {"oft_block_size": int(cfg.get("block_size", 16)), "r": 0,
            "use_cayley_neumann": bool(cfg.get("use_cayley_neumann", False)),
            "num_cayley_neumann_terms": int(cfg.get("num_neumann_terms", 5)),
            "module_dropout": 0.0, "coft": False, "block_share": False}


def _make_oft(cfg, names, states, infos):
    from peft import OFTConfig

    return OFTConfig(**_fields(cfg), init_weights=True, target_modules=exact_target_regex(names)), names


OFT = VariantMapping(
    variant="oft",
    peft_config_class="peft.OFTConfig",
    peft_layer_class="peft.tuners.oft.layer.Linear",
    tensors=(TensorMap("Q", "oft_R.default.weight", "identity",
                       note="(d_in/b, b(b-1)/2): row i is the strict upper triangle of Q_i, row-major "
                            "(torch.triu_indices(b, b, 1)); saved as ...oft_R.weight"),),
    config=(ConfigField("block_size", "oft_block_size", "copied; r fixed 0 (peft wants exactly one of r, "
                                                         "oft_block_size non-zero; its r is the block count)"),
            ConfigField("use_cayley_neumann", "use_cayley_neumann", "copied (peft's default True; ours False)"),
            ConfigField("num_neumann_terms", "num_cayley_neumann_terms", "copied"),
            ConfigField(None, "module_dropout", "fixed 0.0 (peft builds the dropout but never calls it)", effect="stochastic"),
            ConfigField(None, "coft", "fixed False (constrained OFT projects Q in place inside forward: not audited)", effect="unaudited"),
            ConfigField(None, "block_share", "fixed False (one R shared by all blocks: not audited)", effect="unaudited"),
            ConfigField(None, "init_weights", "True (Q = 0); overwritten by the state", effect="init"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement")),
    init="Q = 0 (R = I exactly); overwritten by the given Q",
    notes=("input side: x_blk <- x_blk R_i, so W_eff = W R^T, bias unchanged (layer.py OFTRotationModule.forward)",
           "exact branch (use_cayley_neumann=False) computes (I - Q)(I + Q)^{-1} = R_paper(-Q) = R_paper(Q)^T "
           "(layer.py _cayley_batch, solve(I + Q, I - Q, left=False)); the Neumann branch follows the paper's sign",
           "a block size that does not divide d_in is silently replaced by a nearby divisor (warning only, "
           "layer.py update_layer / adjust_oft_parameters)",
           "Neumann coefficients of peft >= 0.18: I + 2Q + ... + 2Q^{t-2} + Q^{t-1} for t >= 4; t = 3 repeats t = 4, "
           "t = 2 gives I + 2Q",
           "torch.nn.Linear only: transformers Conv1D raises TypeError (model.py _create_new_module)"),
    make_config=_make_oft,
    peft_exports=("OFTConfig",),
    # OFT came in 0.7.0 (#1160), but the layout mapped here (oft_R.<a>.weight, the input-side rotation, the
    # Neumann branch) in 0.16.0: the subject audits OFT from there (older releases: n/a, saying so). The
    # coefficients above came in 0.18.0 (0.16/0.17: 2 on every term, which the parity rows would show)
    since="0.16.0",
    subject_config=lambda cfg, targets, conv1d, make: make(
        "OFTConfig", **_fields(cfg), init_weights=True, **targets),
    subject_defaults=lambda defaults: {"block_size": defaults("OFTConfig")["oft_block_size"],
                                       "use_cayley_neumann": defaults("OFTConfig")["use_cayley_neumann"],
                                       "num_neumann_terms": defaults("OFTConfig")["num_cayley_neumann_terms"]},
)
