"""SHiRA mapping onto peft's ShiraConfig / peft.tuners.shira.layer.Linear.

peft forward (unmerged): F.linear(x, W + sparse_coo(shira_indices, shira_weight · scaling), b) with scaling 1.0
(peft/tuners/shira/layer.py Linear.forward, get_delta_weight): W_new = W + S, bias unchanged. The positions live in
a plain dict ``shira_indices[adapter]`` (int32, (2, K), row then column), not a buffer; peft saves them beside the
values (ShiraModel._get_adapter_state_dict) and reads them back at load (_remap_adapter_state_dict_for_load).
"""
from __future__ import annotations

from ._core import ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields


def _make_shira(cfg, names, states, infos):
    from peft import ShiraConfig

    # the mask comes from the state (copied over peft's own draw); random_seed only fixes peft's draw
    return ShiraConfig(r=int(cfg.get("r", 32)), mask_type="random", random_seed=int(cfg.get("seed", 0)),
                       init_weights=True, target_modules=exact_target_regex(names)), names


SHIRA = VariantMapping(
    variant="shira",
    peft_config_class="peft.ShiraConfig",
    peft_layer_class="peft.tuners.shira.layer.Linear",
    tensors=(TensorMap("values", "shira_weight.default", "identity", note="(K,), K = r·(d_in + d_out), trainable"),
             TensorMap("indices", "shira_indices.default", "identity", kind="buffer",
                       note="(2, K) rows then columns of the canonical (d_out, d_in) weight, int32 in peft (int64 "
                            "ours; copies convert); a plain dict entry in peft (not a registered buffer), saved and "
                            "loaded by ShiraModel's own hooks")),
    config=(ConfigField("r", "r", "copied: K = r·(d_in + d_out) positions per layer"),
            ConfigField("mask_type", "mask_type", "copied ('random': SHiRA-Rand; any other value needs a user "
                                                  "mask_fn, which no config field can carry)"),
            ConfigField("seed", "random_seed", "copied: the seed of peft's mask draw (its own generator per layer); "
                                               "the audit copies the mask itself, so it only matters to peft's init"),
            ConfigField(None, "init_weights", "True (values 0); overwritten by the state", effect="init"),
            ConfigField(None, "fan_in_fan_out", "False: peft's SHiRA takes torch.nn.Linear only", effect="layout"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        effect="placement"),
            *targeting_fields("modules_to_save")),
    init="peft draws its own random mask (torch.randperm from Generator().manual_seed(random_seed), one fresh "
         "generator per layer) with values 0; the state overwrites both the positions and the values",
    notes=("Conv1D (GPT-2) is refused by peft's SHiRA (only torch.nn.Linear, peft/tuners/shira/model.py "
           "_create_new_module: TypeError)",
           "peft re-seeds a fresh generator for every layer, so same-shaped layers get the SAME mask positions "
           "(random_seed=None: torch's fixed default seed, so the same too)",
           "peft adds S to a clone of W in W's dtype before one F.linear: a bf16 base rounds W + S to bf16"),
    make_config=_make_shira,
    peft_exports=("ShiraConfig",),
    since="0.17.0",
    subject_config=lambda cfg, targets, conv1d, make: make(
        "ShiraConfig", r=int(cfg.get("r", 32)), mask_type=str(cfg.get("mask_type", "random")),
        random_seed=int(cfg.get("seed", 0)), init_weights=True, **targets),
    subject_defaults=lambda defaults: {"r": defaults("ShiraConfig")["r"]},
)
