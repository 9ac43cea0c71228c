"""LoRA-family mappings onto peft's LoraConfig / peft.tuners.lora.layer.Linear: lora (incl. rsLoRA), pissa,
dora, eva. All four share lora_A (r, d_in) and lora_B (d_out, r), same layout as the canonical A, B.

peft forward (eval, dropout 0): base(x) + lora_B(lora_A(x)) * scaling, scaling = lora_alpha / r
(use_rslora: lora_alpha / sqrt(r)); DoRA: base(x) + (m/n - 1)*(x W^T) + (m/n)*scaling*lora_B(lora_A(x)),
n = ||W + scaling*B A||_row detached (peft.tuners.lora.dora.DoraLinearLayer.forward).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from ._core import (BASE_LAYOUT, TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping,
                    exact_pattern_key, exact_target_regex, targeting_fields, with_rest)

_LAYER = "peft.tuners.lora.layer.Linear"
_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")

_A = TensorMap("A", "lora_A.default.weight", "identity", note="nn.Linear(d_in, r, bias=False).weight: (r, d_in)")
_B = TensorMap("B", "lora_B.default.weight", "identity", note="nn.Linear(r, d_out, bias=lora_bias).weight: (d_out, r)")
# the residual base weight of the SVD/QR/data-driven inits (PiSSA, OLoRA, CorDA, LoRA-GA)
W_RES = TensorMap("weight", "base_layer.weight", BASE_LAYOUT, kind="base weight", optional=True,
                  note="W_res; when omitted the given base model's layer weight is taken to be W_res already")
_B_BIAS = TensorMap("b_B", "lora_B.default.bias", "identity", optional=True,
                    note="nn.Linear(r, d_out, bias=lora_bias).bias: (d_out,), only under lora_bias")

_COMMON = (
    ConfigField("r", "r"),
    ConfigField("alpha", "lora_alpha"),
    ConfigField(None, "lora_dropout", "fixed 0.0 (dropout makes outputs random; the audit compares in eval)", effect="stochastic"),
    ConfigField(None, "target_modules", "regex (?:name1|name2|...) of the escaped full dotted names; peft fullmatches "
                                        "a string, so exactly these layers are wrapped", effect="placement"),
    ConfigField(None, "bias", "fixed 'none' (base biases stay frozen)", effect="placement"),
    ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D (weight stored (d_in, d_out))", effect="layout"),
)


def _variant(field: str, what: str) -> ConfigField:
    return ConfigField(None, field, f"not set: {what} (a LoRA variant peft selects with this field)", "method")


# LoraConfig's fields that no LoRA-family card varies, with why (every card on LoraConfig names the rest)
LORA_CLASS_REST = targeting_fields(*TARGETING, "target_parameters", "ensure_weight_tying") + (
    ConfigField(None, "rank_pattern", "not set: one r for every layer", "per-layer"),
    ConfigField(None, "alpha_pattern", "not set: one alpha for every layer", "per-layer"),
    ConfigField(None, "use_dora", "False (True is the dora card)", "method"),
    ConfigField(None, "eva_config", "not set (the eva card's init)", "method"),
    ConfigField(None, "loftq_config", "not set: LoftQ's init for quantised bases (init_lora_weights='loftq')", "method"),
    ConfigField(None, "corda_config", "not set: CorDA's init (init_lora_weights='corda')", "method"),
    ConfigField(None, "lora_ga_config", "not set: LoRA-GA's init (init_lora_weights='lora_ga')", "method"),
    _variant("velora_config", "VeLoRA, a compressed-activation backward"),
    _variant("alora_invocation_tokens", "activated LoRA, on after invocation tokens"),
    _variant("monteclora_config", "MonteCLoRA"), _variant("use_bdlora", "block-diagonal LoRA"),
    _variant("arrow_config", "Arrow routing between adapters"), _variant("kasa_config", "KaSA"),
    ConfigField(None, "use_qalora", "False: QA-LoRA is for quantised bases", "layer-type"),
    ConfigField(None, "qalora_group_size", "unused without use_qalora", "layer-type"),
    ConfigField(None, "megatron_config", "not set: Megatron's parallel linear layers", "layer-type"),
    ConfigField(None, "megatron_core", "not set: Megatron's parallel linear layers", "layer-type"),
    ConfigField(None, "trainable_token_indices", "not set: trainable embedding tokens, another method", "method"),
    ConfigField(None, "layer_replication", "not set: it stacks copies of base layers (the model, not a layer)",
                "placement"),
    ConfigField(None, "runtime_config", "default (ephemeral GPU offload: where DoRA's init runs)", "runtime"),
)


def _lora_config(cfg: Mapping[str, Any], names, infos, **extra):
    from peft import LoraConfig

    conv1d = any(i.conv1d for i in infos.values())
    if cfg.get("lora_bias"):
        extra = {"lora_bias": True, **extra}
    kw = dict(r=int(cfg.get("r", 8)), lora_alpha=float(cfg.get("alpha", 8.0)),
              use_rslora=bool(cfg.get("use_rslora", False)), lora_dropout=0.0, bias="none",
              fan_in_fan_out=conv1d, init_lora_weights=True, target_modules=exact_target_regex(names))
    kw.update(extra)
    return LoraConfig(**kw)


def _make_lora(cfg, names, states, infos):
    return _lora_config(cfg, names, infos), names


def _make_dora(cfg, names, states, infos):
    return _lora_config(cfg, names, infos, use_dora=True), names


def _make_eva(cfg, names, states, infos):
    """Per-layer ranks r_l = rows of A; alpha_l chosen so peft's scaling equals the canonical alpha / r (config r)
    on every layer. Without rsLoRA this is exactly peft's own EVA with adjust_scaling_factors=True (the default):
    alpha_l = alpha*r_l/r (peft.tuners.lora.eva._load_eva_state_dict). With rsLoRA peft's EVA still sets
    alpha_l = alpha*r_l/r, so its scaling becomes alpha*sqrt(r_l)/r; the bridge instead sets
    alpha_l = (alpha/r)*sqrt(r_l) to keep the canonical alpha/r (our EVA refuses use_rslora anyway)."""
    r, alpha = int(cfg.get("r", 8)), float(cfg.get("alpha", 8.0))
    rslora = bool(cfg.get("use_rslora", False))
    s = alpha / r
    ranks = {n: int(states[n]["A"].shape[0]) for n in names}
    wrapped = [n for n in names if ranks[n] > 0]
    if not wrapped:
        raise BridgeUnsupported("every EVA layer has rank 0: peft would adapt nothing")
    rank_pattern = {exact_pattern_key(n): ranks[n] for n in wrapped}
    if not cfg.get("adjust_scaling_factors", True):  # peft's adjust_scaling_factors=False: alpha on every layer
        alpha_pattern = {exact_pattern_key(n): alpha for n in wrapped}
    else:
        alpha_pattern = {exact_pattern_key(n): s * (ranks[n] ** 0.5 if rslora else ranks[n]) for n in wrapped}
    return _lora_config(cfg, wrapped, infos, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern), wrapped


# peft's EvaConfig options our EVA audits as config fields (same names), with peft's defaults
EVA_OPTION_DEFAULTS = {"adjust_scaling_factors": True, "whiten": False, "use_label_mask": True, "label_mask_value": -100}


def _subject_lora(method: str):
    """The peft subject's LoraConfig for ``method``: peft's own init (pissa, eva) and flags."""
    def build(cfg, targets, conv1d, make):
        extra = {"use_dora": True} if method == "dora" else {}
        if method == "eva":  # the options only where set away from peft's defaults (older EvaConfigs lack some)
            options = {k: cfg[k] for k, default in EVA_OPTION_DEFAULTS.items() if k in cfg and cfg[k] != default}
            extra["eva_config"] = make("EvaConfig", rho=float(cfg.get("rho", 1.0)), **options)
        if cfg.get("lora_bias"):  # only asked for when set: releases before 0.14 have no lora_bias
            extra["lora_bias"] = True
        fif = {"fan_in_fan_out": True} if conv1d else {}
        return make("LoraConfig", r=int(cfg.get("r", 8)), lora_alpha=float(cfg.get("alpha", 8.0)),
                    use_rslora=bool(cfg.get("use_rslora", False)), lora_dropout=0.0,
                    init_lora_weights={"pissa": "pissa", "eva": "eva"}.get(method, True), **extra, **fif, **targets)
    return build


def _subject_lora_defaults(method: str):
    def defaults_of(defaults):
        d = defaults("LoraConfig")
        out = {"r": d["r"], "alpha": float(d["lora_alpha"]), "use_rslora": d["use_rslora"]}
        if method != "eva":
            return out
        eva = defaults("EvaConfig")
        return {**out, "rho": float(eva["rho"]), **{k: eva.get(k, v) for k, v in EVA_OPTION_DEFAULTS.items()}}
    return defaults_of


def _subject(method: str) -> dict:
    return {"subject_config": _subject_lora(method), "subject_defaults": _subject_lora_defaults(method)}


LORA = VariantMapping(
    variant="lora",
    peft_config_class="peft.LoraConfig",
    peft_layer_class=_LAYER,
    tensors=(_A, _B, _B_BIAS),
    config=_COMMON + (ConfigField("use_rslora", "use_rslora"), ConfigField("lora_bias", "lora_bias"),
                      ConfigField(None, "init_lora_weights", "True (kaiming A, B = 0); overwritten by the state", effect="init")),
    init="peft's default init (init_lora_weights=True) runs and is then overwritten by the given A, B",
    notes=("scaling['default'] = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora",),
    layer_types=_TYPES,
    make_config=_make_lora,
    peft_exports=("LoraConfig",),
    since="0.1.0",
    **_subject("lora"),
)

PISSA = VariantMapping(
    variant="pissa",
    peft_config_class="peft.LoraConfig",
    peft_layer_class=_LAYER,
    tensors=(_A, _B, W_RES),
    config=_COMMON + (ConfigField("use_rslora", "use_rslora", "copied (our PiSSA forbids it, so False)"),
                      ConfigField(None, "init_lora_weights",
                                  "True, NOT 'pissa': peft's 'pissa' init would run its own SVD, overwrite "
                                  "base_layer.weight with its W_res and pick its own SVD signs; the bridge instead "
                                  "copies the given A, B and W_res", effect="init")),
    init="init_lora_weights=True (cheap kaiming/zero init), then A, B and W_res are overwritten: no SVD runs in peft",
    notes=("merged weight W_res + scaling*B A, same forward as LoRA; disabling the adapter gives W_res, not W",
           "peft's own PiSSA init divides S_r by scaling before the square root (s*B A = U_r S_r V_r^T)",
           "W_res is cast to the base dtype on copy (bf16 base: rounded)"),
    layer_types=_TYPES,
    make_config=_make_lora,
    peft_exports=("LoraConfig",),
    since="0.11.0",
    **_subject("pissa"),
)

DORA = VariantMapping(
    variant="dora",
    peft_config_class="peft.LoraConfig",
    peft_layer_class=_LAYER,
    tensors=(_A, _B,
             TensorMap("m", "lora_magnitude_vector.default.weight", "identity",
                       note="DoraLinearLayer.weight, (d_out,); saved as '<layer>.lora_magnitude_vector'")),
    config=_COMMON + (ConfigField("use_rslora", "use_rslora"),
                      ConfigField(None, "use_dora", "fixed True", effect="method"),
                      ConfigField(None, "init_lora_weights", "True; A, B and m are overwritten by the state", effect="init")),
    init="peft's init computes m = ||W||_row with B = 0; the given A, B, m overwrite it",
    notes=("forward: base(x) + (m/n - 1)(x W^T) + (m/n) s (x A^T) B^T with n = ||W + s B A||_row detached: "
           "the bias is not scaled; the detached n changes gradients only, not outputs",
           "ENABLE_DORA_CACHING is False by default, so overwriting A, B after construction is safe"),
    layer_types=_TYPES,
    make_config=_make_dora,
    peft_exports=("LoraConfig",),
    since="0.9.0",
    **_subject("dora"),
)

EVA = VariantMapping(
    variant="eva",
    peft_config_class="peft.LoraConfig",
    peft_layer_class=_LAYER,
    tensors=(TensorMap("A", "lora_A.default.weight", "identity", note="(r_l, d_in): per-layer rank"),
             TensorMap("B", "lora_B.default.weight", "identity", note="(d_out, r_l)")),
    config=_COMMON + (
        ConfigField("use_rslora", "use_rslora", "copied if present (absent: False)"),
        ConfigField(None, "rank_pattern", "{'^'+re.escape(name): r_l} for every layer, r_l = rows of the state's A", effect="init"),
        ConfigField("alpha", "alpha_pattern", "{'^'+re.escape(name): alpha*r_l/r} so that scaling = alpha/r on every "
                                              "layer, as peft's EVA with adjust_scaling_factors=True (rsLoRA: "
                                              "alpha*sqrt(r_l)/r keeps alpha/r; peft's EVA would give "
                                              "alpha*sqrt(r_l)/r scaling there)"),
        ConfigField("rho", "eva_config.rho", "not mapped: rank redistribution already happened in the given state"),
        *(ConfigField(k, f"eva_config.{k}", "the subject passes it; the bridge copies the state it produced "
                                            "(adjust_scaling_factors: the alpha_pattern above)")
          for k in EVA_OPTION_DEFAULTS),
        ConfigField(None, "eva_config.tau", "peft's default 0.99: when its incremental PCA stops (an approximation "
                                            "of the exact principal directions, declared on the card)", "precision"),
        ConfigField(None, "init_lora_weights", "True, NOT 'eva': the data-driven init (initialize_lora_eva_weights, "
                                               "IncrementalPCA) is not re-run; the given A (PCA rows), B overwrite", effect="init")),
    init="init_lora_weights=True; the given A, B (per-layer ranks) overwrite it. A layer whose state has r_l = 0 is "
         "not targeted, as peft's EVA removes such a LoRA; peft_state returns A (0, d_in), B (d_out, 0) for it",
    notes=("peft's EVA mean-centres its inputs and uses seeded svd_lowrank; that only matters for the init, which "
           "the bridge takes from the given state",),
    layer_types=_TYPES,
    make_config=_make_eva,
    peft_exports=("LoraConfig", "EvaConfig", "get_eva_state_dict", "initialize_lora_eva_weights"),
    nested=(("eva_config", "EvaConfig"),),
    since="0.14.0",
    **_subject("eva"),
)


# every LoraConfig field is named on each card: its own, then the class's shared ones
BIAS_ELSEWHERE = (ConfigField(None, "lora_bias", "False: the bias on lora_B is an axis of the lora card (the same "
                                                  "added term whatever the init)", "elsewhere"),)
LORA, PISSA, DORA, EVA = (replace(m, config=with_rest(m.config, (BIAS_ELSEWHERE if m is not LORA else ()) + LORA_CLASS_REST))
                          for m in (LORA, PISSA, DORA, EVA))
