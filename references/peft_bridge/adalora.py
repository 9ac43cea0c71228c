"""AdaLoRA mapping onto peft's AdaLoraConfig / peft.tuners.adalora.layer.SVDLinear.

peft forward (eval, dropout 0; peft/tuners/adalora/layer.py:183-195):
base(x) + (x @ (lora_A ⊙ lora_E)ᵀ @ lora_Bᵀ) · lora_alpha / (ranknum + 1e-5), ranknum = float(init_r) (a frozen
Parameter, not saved). lora_A (r, d_in) = Q, lora_E (r, 1) = λ, lora_B (d_out, r) = P are ParameterDict entries,
the canonical layout as is. Conv1D: fan_in_fan_out forced True (peft/tuners/adalora/model.py:210-216); the forward
uses A, E, B unchanged (only merging transposes).
"""
from __future__ import annotations

from ._core import ConfigField, TensorMap, VariantMapping, exact_target_regex, with_rest
from .lora import LORA_CLASS_REST

_SCHEDULE = ("target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight")
_DEFAULTS = {"target_r": 8, "tinit": 0, "tfinal": 0, "deltaT": 1, "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.5}


def _fields(cfg) -> dict:
    """peft's AdaLoraConfig arguments for our canonical cfg (init_r = r; total_step defaulted, see below)."""
    kw = {k: cfg.get(k, _DEFAULTS[k]) for k in _SCHEDULE}
    kw["target_r"] = int(kw["target_r"])
    total = cfg.get("total_step")
    # peft refuses total_step None and needs tinit < total_step - tfinal (peft/tuners/adalora/config.py:101-113);
    # ours needs it only to allocate, so the smallest value peft accepts stands in (the allocator is not run here)
    kw["total_step"] = int(total) if total else int(kw["tinit"]) + int(kw["tfinal"]) + 1
    return dict(init_r=int(cfg.get("r", 12)), lora_alpha=float(cfg.get("alpha", 8.0)), lora_dropout=0.0,
                init_lora_weights=True, **kw)


RANKNUM_EPS = 1e-5  # peft divides by ranknum + 1e-5 (peft/tuners/adalora/layer.py:172, 192)


def _make_adalora(cfg, names, states, infos):
    """The parity twin computes the canonical s = alpha / r: lora_alpha = alpha·(r + 1e-5)/r cancels peft's
    epsilon (as the EVA mapping's alpha_pattern keeps alpha / r); peft's own scale is audited by the peft
    subject, which passes lora_alpha = alpha."""
    from peft import AdaLoraConfig

    conv1d = any(i.conv1d for i in infos.values())
    kw = _fields(cfg)
    kw["lora_alpha"] = kw["lora_alpha"] * (kw["init_r"] + RANKNUM_EPS) / kw["init_r"]
    return AdaLoraConfig(fan_in_fan_out=conv1d, bias="none", target_modules=exact_target_regex(names), **kw), names


def _subject_config(cfg, targets, conv1d, make):
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("AdaLoraConfig", **_fields(cfg), **fif, **targets)


def _subject_defaults(defaults):
    d = defaults("AdaLoraConfig")
    out = {"r": d["init_r"], "alpha": float(d["lora_alpha"]), "total_step": d["total_step"]}
    out.update({k: d[k] for k in _SCHEDULE})
    return out


ADALORA = VariantMapping(
    variant="adalora",
    peft_config_class="peft.AdaLoraConfig",
    peft_layer_class="peft.tuners.adalora.layer.SVDLinear",
    tensors=(TensorMap("A", "lora_A.default", "identity", note="Q, right singular vectors: (r, d_in)"),
             TensorMap("E", "lora_E.default", "identity", note="λ, singular values: (r, 1)"),
             TensorMap("B", "lora_B.default", "identity", note="P, left singular vectors: (d_out, r)")),
    config=with_rest((ConfigField("r", "init_r", "copied (peft ignores r, warning when it is not 8)"),
            ConfigField("alpha", "lora_alpha", "alpha·(r + 1e-5)/r for the parity twin, so that peft's "
                                               "lora_alpha / (ranknum + 1e-5) is the canonical alpha / r; the peft "
                                               "subject passes alpha itself (peft's own scale is audited there)"),
            ConfigField("target_r", "target_r"),
            ConfigField("tinit", "tinit"), ConfigField("tfinal", "tfinal"), ConfigField("deltaT", "deltaT"),
            ConfigField("beta1", "beta1"), ConfigField("beta2", "beta2"),
            ConfigField("orth_reg_weight", "orth_reg_weight"),
            ConfigField("total_step", "total_step", "copied; None (ours: only the allocator needs it) becomes "
                                                    "tinit + tfinal + 1, the smallest value peft accepts"),
            ConfigField(None, "lora_dropout", "fixed 0.0", effect="stochastic"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement"),
            ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D (peft forces it anyway)", effect="layout"),
            ConfigField(None, "init_lora_weights", "True (E = 0, A, B ~ N(0, 0.02²)); overwritten by the state", effect="init"),
            ConfigField(None, "r", "not set: AdaLoRA's rank is init_r", "inert"),
            ConfigField(None, "use_rslora", "False: AdaLoRA's layer reads no rsLoRA flag", "inert"),
            ConfigField(None, "lora_bias", "False: AdaLoRA's layer has no bias on B", "inert"),
            ConfigField(None, "use_dora", "False: AdaLoraConfig refuses DoRA", "method"),
            ConfigField(None, "bias", "fixed 'none' (base biases stay frozen)", "placement")), LORA_CLASS_REST),
    init="init_lora_weights=True (E = 0, A, B ~ N(0, 0.02²)), then A, E, B are overwritten by the state; "
         "ranknum.default (frozen Parameter, float(init_r)) is not part of the canonical state",
    notes=("peft's scale lora_alpha / (ranknum + 1e-5) is relative 1e-5/init_r below alpha / init_r: cancelled in the "
           "twin through lora_alpha (see the config rule), measured on the peft subject",
           "the orthogonality regulariser is added only by AdaLoraModel.forward to an output's .loss, as the mean "
           "non-squared ‖cov − I‖_F over the A and B matrices (the paper: squared, summed); a plain PeftModel "
           "call bypasses it",
           "rank allocation (update_and_allocate) masks lora_E in place; never called by the parity twin"),
    layer_types=("torch.nn.Linear", "transformers.pytorch_utils.Conv1D"),
    make_config=_make_adalora,
    peft_exports=("AdaLoraConfig", "AdaLoraModel"),
    since="0.3.0",
    subject_config=_subject_config,
    subject_defaults=_subject_defaults,
)
