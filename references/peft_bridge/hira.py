"""HiRA mapping onto peft's HiraConfig / peft.tuners.hira.layer.Linear.

peft forward (hira_dropout 0): base(x) + F.linear(x, transpose(W, fan_in_fan_out) ⊙ (B A)) with A = hira_A (r, d_in),
B = hira_B (d_out, r) (peft/tuners/hira/layer.py Linear.forward: _prod_AB = Aᵀ Bᵀ, then W ⊙ _prod_ABᵀ), so
W_eff = W + W ⊙ (B A), bias unchanged; merge adds W_before ⊙ transpose(B A) to the stored weight (HiraLayer._merge)
and unmerge restores a copy of the weight taken before the first merge. No scale. Conv1D: fan_in_fan_out=True.
"""
from __future__ import annotations

from ._core import TARGETING, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _make_hira(cfg, names, states, infos):
    from peft import HiraConfig

    conv1d = any(i.conv1d for i in infos.values())
    return HiraConfig(r=int(cfg.get("r", 32)), hira_dropout=0.0, fan_in_fan_out=conv1d, init_weights=True,
                      target_modules=exact_target_regex(names)), names


def _subject_hira(cfg, targets, conv1d, make):
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("HiraConfig", r=int(cfg.get("r", 32)), init_weights=True, **fif, **targets)


HIRA = VariantMapping(
    variant="hira",
    peft_config_class="peft.HiraConfig",
    peft_layer_class="peft.tuners.hira.layer.Linear",
    tensors=(TensorMap("A", "hira_A.default", "identity", note="(r, d_in) as ours"),
             TensorMap("B", "hira_B.default", "identity", note="(d_out, r) as ours")),
    config=(ConfigField("r", "r"),
            ConfigField(None, "rank_pattern", "not set: one r for every layer", effect="per-layer"),
            ConfigField(None, "hira_dropout", "fixed 0.0", effect="stochastic"),
            ConfigField(None, "init_weights", "True (A kaiming-uniform, B = 0; 'gaussian' draws A ~ N(0, 1/r²), "
                                              "B = 0); overwritten by the state", effect="init"),
            ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D", effect="layout"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        effect="placement"),
            *targeting_fields(*TARGETING)),
    init="A kaiming-uniform, B = 0 (init_weights=True); overwritten by the given state",
    notes=("the Hadamard product is with transpose(W, fan_in_fan_out): the canonical W on Conv1D too",
           "merge keeps a CPU copy of the weight before the first merge; unmerge restores it exactly"),
    layer_types=_TYPES,
    make_config=_make_hira,
    peft_exports=("HiraConfig",),
    since="0.20.0",
    subject_config=_subject_hira,
    subject_defaults=lambda defaults: {"r": defaults("HiraConfig")["r"]},
)
