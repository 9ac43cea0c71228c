"""(IA)^3 mappings onto peft's IA3Config / peft.tuners.ia3.layer.Linear.

peft forward (peft.tuners.ia3.layer.Linear.forward):
  output scaling (is_feedforward=False): y = base(x) * l.flatten()      -> diag(l) W, bias scaled too
  input scaling  (is_feedforward=True):  y = base(x * l.flatten())      -> W diag(l), bias unchanged
ia3_l is (d_out, 1) for output scaling and (1, d_in) for input scaling.
"""
from __future__ import annotations

from ._core import TARGETING, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields, with_rest

_LAYER = "peft.tuners.ia3.layer.Linear"
_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _ia3_config(names, infos, feedforward: bool):
    from peft import IA3Config

    regex = exact_target_regex(names)
    return IA3Config(target_modules=regex,
                     # an explicit value is required: None makes peft fall back on its per-model-type default table
                     # (qwen2/qwen3: down_proj) or raise for unknown models
                     feedforward_modules=regex if feedforward else [],
                     fan_in_fan_out=any(i.conv1d for i in infos.values()),
                     init_ia3_weights=True)


def _make_ia3(cfg, names, states, infos):
    return _ia3_config(names, infos, feedforward=False), names


def _make_ia3_ff(cfg, names, states, infos):
    return _ia3_config(names, infos, feedforward=True), names


def _subject_ia3(feedforward: bool):
    def build(cfg, targets, conv1d, make):
        ff = targets["target_modules"] if feedforward else []
        fif = {"fan_in_fan_out": True} if conv1d else {}
        return make("IA3Config", feedforward_modules=ff, init_ia3_weights=True, **fif, **targets)
    return build


_TARGET = ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement")
_INIT = ConfigField(None, "init_ia3_weights", "True (l = 1); overwritten by the state", effect="init")
_FIF = ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D", effect="layout")

IA3 = VariantMapping(
    variant="ia3",
    peft_config_class="peft.IA3Config",
    peft_layer_class=_LAYER,
    tensors=(TensorMap("l", "ia3_l.default", "reshape (d_out,1)", note="nn.Parameter (d_out, 1)"),),
    config=with_rest((_TARGET,
            ConfigField(None, "feedforward_modules", "[] (explicit: None would load peft's model-type defaults)", effect="method"),
            _FIF, _INIT), targeting_fields(*TARGETING)),
    init="l = 1 (exact identity); overwritten",
    notes=("the bias is scaled too: y = (x W^T + b) * l",
           "placement is the caller's: the bridge targets exactly the given names (peft's qwen/gemma/llama4 "
           "defaults are q_proj, v_proj, down_proj, not the paper's k/v/FFN)"),
    layer_types=_TYPES,
    make_config=_make_ia3,
    peft_exports=("IA3Config",),
    since="0.4.0",
    subject_config=_subject_ia3(False),
    subject_defaults=lambda defaults: {},
)

IA3_FF = VariantMapping(
    variant="ia3_ff",
    peft_config_class="peft.IA3Config",
    peft_layer_class=_LAYER,
    tensors=(TensorMap("l", "ia3_l.default", "reshape (1,d_in)", note="nn.Parameter (1, d_in)"),),
    config=with_rest((_TARGET,
            ConfigField(None, "feedforward_modules",
                        "= target_modules (the same exact regex; a list would be matched with a bare "
                        "key.endswith(entry), without the '.', e.g. 'proj' would hit every *proj)", effect="method"),
            _FIF, _INIT), targeting_fields(*TARGETING)),
    init="l = 1 (exact identity); overwritten",
    notes=("input scaling: y = (x * l) W^T + b, bias unchanged",),
    layer_types=_TYPES,
    make_config=_make_ia3_ff,
    peft_exports=("IA3Config",),
    since="0.4.0",
    subject_config=_subject_ia3(True),
    subject_defaults=lambda defaults: {},
)
