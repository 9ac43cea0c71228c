"""CorDA mapping onto peft's LoraConfig(init_lora_weights="corda", corda_config=CordaConfig(...)).

Same tensors and forward as LoRA (lora_A (r, d_in), lora_B (d_out, r); base(x) + s·lora_B(lora_A(x))), with
the base weight replaced by W_res at init (LoraLayer.corda_init, peft/tuners/lora/layer.py). peft's init needs
``preprocess_corda`` (peft/tuners/lora/corda.py) run on the model first: it hooks the targets, collects each
layer's input covariance while a user callback runs the calibration data, and attaches the SVD of W C to each
layer; the peft subject does that (audit/subjects/peft.py). For the parity twin the bridge runs the cheap init
(init_lora_weights=True) and copies A, B and W_res in, like PiSSA's mapping.
"""
from __future__ import annotations

from ._core import ConfigField, VariantMapping, with_rest
from .lora import _A, _B, _COMMON, W_RES, BIAS_ELSEWHERE, LORA_CLASS_REST, _make_lora

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _corda_config_class():
    """peft's CordaConfig: not exported at the package top level (peft/tuners/lora/config.py)."""
    from peft.tuners.lora.config import CordaConfig
    return CordaConfig


def _subject_config(cfg, targets, conv1d, make):
    """peft's own CorDA init for the subject: corda_config with the card's mode; the subject runs preprocess_corda."""
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("LoraConfig", r=int(cfg.get("r", 8)), lora_alpha=float(cfg.get("alpha", 8.0)),
                use_rslora=bool(cfg.get("use_rslora", False)), lora_dropout=0.0, init_lora_weights="corda",
                corda_config=_corda_config_class()(corda_method=str(cfg.get("corda_method", "ipm"))), **fif, **targets)


def _subject_defaults(defaults):
    import dataclasses
    d = defaults("LoraConfig")
    mode = next(f.default for f in dataclasses.fields(_corda_config_class()) if f.name == "corda_method")
    return {"r": d["r"], "alpha": float(d["lora_alpha"]), "use_rslora": d["use_rslora"], "corda_method": mode}


CORDA = VariantMapping(
    variant="corda",
    peft_config_class="peft.LoraConfig",
    peft_layer_class="peft.tuners.lora.layer.Linear",
    tensors=(_A, _B, W_RES),
    config=with_rest(_COMMON + (
        ConfigField("use_rslora", "use_rslora", "copied (our CorDA refuses it, so False)"),
        ConfigField("corda_method", "corda_config.corda_method", "'ipm' or 'kpm', the subject passes it; the bridge "
                                                                 "copies the state it produced"),
        ConfigField(None, "corda_config.cache_file", "not set: a file caching the decomposition", "runtime"),
        ConfigField(None, "corda_config.covariance_file", "not set: a file caching the covariance", "runtime"),
        ConfigField(None, "corda_config.verbose", "False: progress printing", "runtime"),
        ConfigField(None, "corda_config.use_float16_for_covariance", "False: the covariance accumulated in float32 "
                                                                     "(float16 only rounds it more)", "precision"),
        ConfigField(None, "corda_config.prune_temporary_fields", "True: deletes preprocessing attributes", "runtime"),
        ConfigField(None, "init_lora_weights",
                    "True, NOT 'corda': peft's 'corda' init needs preprocess_corda's per-layer SVD and overwrites "
                    "base_layer.weight with its W_res; the bridge instead copies the given A, B and W_res",
                    effect="init")), BIAS_ELSEWHERE + LORA_CLASS_REST),
    init="init_lora_weights=True (cheap kaiming/zero init), then A, B and W_res are overwritten: no SVD runs in peft",
    notes=("merged weight W_res + scaling*B A, same forward as LoRA; disabling the adapter gives W_res, not W",
           "peft's preprocess_corda hook reads each forward's layer input as (tokens, d_in) after squeeze(0): "
           "a batch of one sequence per call (the subject feeds rows one at a time); it divides each call's "
           "input by its largest value (torch.max(input).abs()) before x^T x, counts padding tokens, and damps "
           "C by 0.01*mean(diag C) (doubled while the inverse is inaccurate) (peft/tuners/lora/corda.py)",
           "peft's corda_init divides S by scaling before the square root, as PiSSA (s*B A = U_I S_I V_I^T C^-1)",
           "a checkpoint saved with init_lora_weights='corda' cannot be loaded without re-running preprocess_corda "
           "(corda_init raises without the layer's eigens); peft converts it with "
           "path_initial_model_for_weight_conversion instead",
           "W_res is cast to the base dtype on copy (bf16 base: rounded)"),
    layer_types=_TYPES,
    make_config=_make_lora,
    peft_exports=("LoraConfig",),  # CordaConfig and preprocess_corda live in peft.tuners.lora (not re-exported)
    since="0.15.0",
    nested=(("corda_config", "CordaConfig"),),
    subject_config=_subject_config,
    subject_defaults=_subject_defaults,
)
