"""LoHa mapping onto peft's LoHaConfig / peft.tuners.loha.layer.Linear.

peft forward (eval, rank_dropout = module_dropout = 0): base(x) + F.linear(x, ΔW) with
ΔW = ((w1_a @ w1_b) * (w2_a @ w2_b)) * scale built by its HadaWeight autograd Function
(peft/tuners/loha/layer.py:196-202, 266-273, 366-386), scale = alpha / r (:130). The four factors are
ParameterDict entries in the canonical layout (:66-71), so every transform is the identity.
"""
from __future__ import annotations

from ._core import TARGETING, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields, with_rest


_PATTERNS = (ConfigField(None, "rank_pattern", "not set: one r for every layer", "per-layer"),
             ConfigField(None, "alpha_pattern", "not set: one alpha for every layer", "per-layer"))


def _make_loha(cfg, names, states, infos):
    from peft import LoHaConfig

    return LoHaConfig(r=int(cfg.get("r", 8)), alpha=float(cfg.get("alpha", 8.0)), rank_dropout=0.0,
                      module_dropout=0.0, init_weights=True, target_modules=exact_target_regex(names)), names


def _subject_config(cfg, targets, conv1d, make):
    """peft's own LoHa with its own init (init_weights=True: w2_b = 0, the rest kaiming-uniform); peft has no
    fan_in_fan_out for LoHa and refuses transformers Conv1D whatever is passed."""
    return make("LoHaConfig", r=int(cfg.get("r", 8)), alpha=float(cfg.get("alpha", 8.0)), rank_dropout=0.0,
                module_dropout=0.0, init_weights=True, **targets)


def _subject_defaults(defaults):
    d = defaults("LoHaConfig")
    return {"r": d["r"], "alpha": float(d["alpha"])}


_NOTE = "nn.ParameterDict entry (no .weight); saved as '<layer>.{}' (peft drops '.default')"

LOHA = VariantMapping(
    variant="loha",
    peft_config_class="peft.LoHaConfig",
    peft_layer_class="peft.tuners.loha.layer.Linear",
    tensors=(TensorMap("w1_a", "hada_w1_a.default", "identity", note="(d_out, r); " + _NOTE.format("hada_w1_a")),
             TensorMap("w1_b", "hada_w1_b.default", "identity", note="(r, d_in); " + _NOTE.format("hada_w1_b")),
             TensorMap("w2_a", "hada_w2_a.default", "identity", note="(d_out, r); " + _NOTE.format("hada_w2_a")),
             TensorMap("w2_b", "hada_w2_b.default", "identity", note="(r, d_in); " + _NOTE.format("hada_w2_b"))),
    config=with_rest((ConfigField("r", "r"),
            ConfigField("alpha", "alpha", "copied (peft's field is alpha, not lora_alpha)"),
            ConfigField(None, "rank_dropout", "fixed 0.0 (random, and always rescaled by 1/mean in peft)", effect="stochastic"),
            ConfigField(None, "module_dropout", "fixed 0.0 (randomly skips the adapter in training)", effect="stochastic"),
            ConfigField(None, "init_weights", "True (w2_b = 0, the rest kaiming-uniform); overwritten by the state", effect="init"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement")), targeting_fields(*TARGETING) + _PATTERNS + (ConfigField(None, "use_effective_conv2d", "Conv2d only", "layer-type"),)),
    init="init_weights=True (w1_a, w1_b, w2_a kaiming_uniform(a=√5), w2_b = 0); overwritten by the given state",
    notes=("ΔW is materialised (d_out × d_in) on every forward; HadaWeight saves only the factors and recomputes "
           "the two products in backward",
           "scale is passed as torch.tensor(alpha / r), a float32 0-dim tensor (peft/tuners/loha/layer.py:201): for an "
           "alpha/r that is not a float32 number a float64 adapter's ΔW is off by that rounding (measured 2.98e-8 "
           "relative at alpha=1, r=3); the audited scales (2, 3, 0.5, 1) are float32 numbers: measured 0",
           "rank_dropout (training only) always rescales the kept rows by 1/mean (layer.py:209-217); LyCORIS does not "
           "by default; the bridge fixes it at 0",
           "transformers Conv1D is refused (TypeError: loha/model.py:88-92, lycoris_utils.py:240-259)"),
    make_config=_make_loha,
    peft_exports=("LoHaConfig",),
    since="0.6.0",
    subject_config=_subject_config,
    subject_defaults=_subject_defaults,
)
