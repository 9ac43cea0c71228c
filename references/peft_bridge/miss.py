"""MiSS mapping onto peft's MissConfig / peft.tuners.miss.layer.MissLinear.

peft forward (miss_dropout 0): balance / mini: base(x) + Σ_k pad(x)_[k] @ D (mini: D = miss_block repeated
out_features/mini_r times along d_out); bat: F.linear(x, W + ΔW, b) with ΔW_ij = W_ij B_i + B_i over r × r blocks,
B = miss_block (d_out/r, r, r) (peft/tuners/miss/layer.py MissLinear.forward, get_delta_weight). Bias unchanged.
init_weights picks the form (True: balance, "bat", "mini"; False: balance with a kaiming-uniform D).
"""
from __future__ import annotations

from ._core import TARGETING, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields

_INIT = {"balance": True, "bat": "bat", "mini": "mini"}


def _make_miss(cfg, names, states, infos):
    from peft import MissConfig

    mode = cfg.get("mode", "balance")
    return MissConfig(r=int(cfg.get("r", 64)), init_weights=_INIT[mode], mini_r=int(cfg.get("mini_r", 1)),
                      miss_dropout=0.0, bias="none", target_modules=exact_target_regex(names)), names


MISS = VariantMapping(
    variant="miss",
    peft_config_class="peft.MissConfig",
    peft_layer_class="peft.tuners.miss.layer.MissLinear",
    tensors=(TensorMap("D", "miss_block.default", "identity",
                       note="balance (r, d_out); mini (r, mini_r); bat (d_out/r, r, r): the same layout as ours"),),
    config=(ConfigField("r", "r"),
            ConfigField("mode", "init_weights", "balance -> True, bat -> 'bat', mini -> 'mini' (peft's init_weights "
                                                "selects the form; False is balance with a random D)"),
            ConfigField("mini_r", "mini_r", "copied (read by peft only under init_weights='mini')"),
            ConfigField(None, "miss_dropout", "fixed 0.0", effect="stochastic"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement"),
            *targeting_fields(*TARGETING)),
    init="D = 0 in every form (init_weights True / 'bat' / 'mini'); overwritten by the given state",
    notes=("peft refuses transformers Conv1D for MiSS (MissModel._create_new_module: torch.nn.Linear only)",
           "bat: peft's forward is dense (F.linear with W + ΔW), the base layer is not called"),
    make_config=_make_miss,
    peft_exports=("MissConfig",),
    since="0.17.0",
    subject_config=lambda cfg, targets, conv1d, make: make(
        "MissConfig", r=int(cfg.get("r", 64)), init_weights=_INIT[cfg.get("mode", "balance")],
        mini_r=int(cfg.get("mini_r", 1)), **targets),
    subject_defaults=lambda defaults: {"r": defaults("MissConfig")["r"],
                                       "mode": "balance" if defaults("MissConfig")["init_weights"] is True
                                       else defaults("MissConfig")["init_weights"]},
)
