"""OFT mapping onto peft's OFTConfig / peft.tuners.oft.layer.Linear (OFTRotationModule, peft >= 0.16).

peft forward (layer.py Linear.forward -> OFTRotationModule.forward): x reshaped to (..., r, b), each block
x_blk <- x_blk R_i (einsum "...rk,rkc->...rc"), then the base layer: W_eff = W R^T, bias unchanged.
R_i from oft_R.<adapter>.weight (r, b(b-1)/2) through Q[rows, cols] = vec, Q - Q^T (rows, cols = triu_indices;
non-persistent buffers), then either the Cayley-Neumann series I + 2Q + ... + 2Q^{t-2} + Q^{t-1}
(use_cayley_neumann, the paper's sign) or the exact solve (I - Q)(I + Q)^{-1} (the paper's R transposed).
The canonical Q is peft's vector as is.
"""
from __future__ import annotations

from ._core import TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields


def _fields(cfg) -> dict:
    return {"oft_block_size": int(cfg.get("block_size", 16)), "r": 0,
            "use_cayley_neumann": bool(cfg.get("use_cayley_neumann", False)),
            "num_cayley_neumann_terms": int(cfg.get("num_neumann_terms", 5)),
            "module_dropout": 0.0, "coft": bool(cfg.get("coft", False)), "eps": float(cfg.get("eps", 6e-5)),
            "block_share": bool(cfg.get("block_share", False))}


def _subject_oft(cfg, targets, conv1d, make):
    """peft's OFTConfig for the subject. Releases before 0.16 have no Cayley-Neumann fields (their forward is
    the exact Cayley map): those fields are passed only where the release has them, and a config that asks
    for the Neumann series is refused there by ``make``."""
    import dataclasses

    import peft
    kw = _fields(cfg)
    have = {f.name for f in dataclasses.fields(peft.OFTConfig)}
    if "use_cayley_neumann" not in have and not kw["use_cayley_neumann"]:
        kw = {k: v for k, v in kw.items() if k not in ("use_cayley_neumann", "num_cayley_neumann_terms")}
    return make("OFTConfig", **kw, init_weights=True, **targets)


def _subject_defaults(defaults) -> dict:
    """peft's OFT defaults in our fields. Releases before 0.16 have no Neumann fields (their forward is the
    exact Cayley map) and default to r = 8 blocks per layer, a block size that differs between layers: not
    one block_size, so that default is refused with the reason."""
    d = defaults("OFTConfig")
    if not d.get("oft_block_size"):
        raise BridgeUnsupported(f"peft's default OFT config gives r = {d.get('r')} blocks per layer (oft_block_size "
                                "0): a block size that differs between layers, which one block_size cannot express")
    return {"block_size": d["oft_block_size"], "use_cayley_neumann": d.get("use_cayley_neumann", False),
            "num_neumann_terms": d.get("num_cayley_neumann_terms", 5)}


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
            ConfigField("coft", "coft", "copied (peft projects Q in place inside every forward)"),
            ConfigField("block_share", "block_share", "copied (one R_0 on every diagonal position; Q has one row)"),
            ConfigField(None, "init_weights", "True (Q = 0); overwritten by the state", effect="init"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement"),
            ConfigField(None, "r", "0: the block count, determined by oft_block_size (r·b = d_in)", "derived"),
            ConfigField("eps", "eps", "copied (COFT's radius, ε/√n on each skew block's Frobenius norm)"),
            ConfigField(None, "fan_in_fan_out", "False: peft's OFT refuses Conv1D", "layout"),
            ConfigField(None, "bias", "fixed 'none' (base biases stay frozen)", "placement"),
            *targeting_fields(*TARGETING),
            ConfigField(None, "rank_pattern", "not set (0.14 only): one block count for every layer", "per-layer"),
            ConfigField(None, "alpha_pattern", "not set (0.14 only): unused by OFT", "per-layer")),
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
    subject_config=_subject_oft,
    subject_defaults=_subject_defaults,
)
