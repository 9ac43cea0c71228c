"""LoRA-GA mapping onto peft's LoraConfig(init_lora_weights="lora_ga", lora_ga_config=LoraGAConfig(...)).

Same tensors and forward as LoRA (lora_A (r, d_in), lora_B (d_out, r); base(x) + s·lora_B(lora_A(x))), with the
base weight replaced by W_res at init (LoraLayer.lora_ga_init, peft/tuners/lora/layer.py). peft's init needs
``preprocess_loraga`` (peft/tuners/lora/loraga.py) run on the model first: it gives the target weights
requires_grad, runs a user train_step (forward and backward on the calibration data) and attaches each layer's
mean weight gradient; the peft subject does that with the audit's loss (audit/subjects/peft.py). For the parity
twin the bridge runs the cheap init (init_lora_weights=True) and copies A, B and W_res in, like PiSSA's mapping.
"""
from __future__ import annotations

from ._core import ConfigField, VariantMapping, with_rest
from .lora import _A, _B, _COMMON, W_RES, BIAS_ELSEWHERE, LORA_CLASS_REST, _make_lora

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _subject_config(cfg, targets, conv1d, make):
    """peft's own LoRA-GA init for the subject: the paper's "stable" scale with the card's split and γ; the subject
    runs preprocess_loraga."""
    fif = {"fan_in_fan_out": True} if conv1d else {}
    ga = make("LoraGAConfig", direction=str(cfg.get("direction", "ArB2r")), scale=str(cfg.get("scale", "stable")),
              stable_gamma=float(cfg.get("stable_gamma", 16.0)))
    return make("LoraConfig", r=int(cfg.get("r", 8)), lora_alpha=float(cfg.get("alpha", 8.0)),
                use_rslora=bool(cfg.get("use_rslora", False)), lora_dropout=0.0, init_lora_weights="lora_ga",
                lora_ga_config=ga, **fif, **targets)


def _subject_defaults(defaults):
    d, ga = defaults("LoraConfig"), defaults("LoraGAConfig")
    return {"r": d["r"], "alpha": float(d["lora_alpha"]), "use_rslora": d["use_rslora"],
            "direction": ga["direction"], "scale": ga["scale"], "stable_gamma": float(ga["stable_gamma"])}


LORAGA = VariantMapping(
    variant="loraga",
    peft_config_class="peft.LoraConfig",
    peft_layer_class="peft.tuners.lora.layer.Linear",
    tensors=(_A, _B, W_RES),
    config=with_rest(_COMMON + (
        ConfigField("use_rslora", "use_rslora"),
        ConfigField("direction", "lora_ga_config.direction", "'ArB2r', 'A2rBr' or 'ArBr' (peft's 'random' draws "
                                                             "a split: not an axis here)"),
        ConfigField("stable_gamma", "lora_ga_config.stable_gamma"),
        ConfigField("scale", "lora_ga_config.scale", "'stable' (the paper's, §3.3), 'unit' or 'gd_scale' (the "
                                                     "authors' code's ablations); peft's 'weight_svd' has no "
                                                     "counterpart (ours refuses it)"),
        ConfigField(None, "init_lora_weights",
                    "True, NOT 'lora_ga': peft's 'lora_ga' init needs preprocess_loraga's gradients and overwrites "
                    "base_layer.weight with its W_res; the bridge instead copies the given A, B and W_res",
                    effect="init")), BIAS_ELSEWHERE + LORA_CLASS_REST),
    init="init_lora_weights=True (cheap kaiming/zero init), then A, B and W_res are overwritten: no SVD runs in peft",
    notes=("merged weight W_res + scaling*B A, same forward as LoRA; disabling the adapter gives W_res, not W",
           "peft's lora_ga_init: a randomised torch.svd_lowrank(G, q=min(4r, min(G.shape)), niter=4) in float32; "
           "B = U_J diag(S_J) (the singular values on B), and the stable scale d_out^{1/4}/sqrt(gamma) on B only; "
           "W -= scaling*B A in float32 (peft/tuners/lora/layer.py lora_ga_init)",
           "preprocess_loraga averages weight.grad over the backward calls counted by a full backward hook, in the "
           "weight's dtype (peft/tuners/lora/loraga.py estimate_gradients)",
           "a checkpoint saved with init_lora_weights='lora_ga' loads with a random A, B = 0 init overwritten by the "
           "file and W left unchanged (lora_ga_init's fallback without a gradient): the loaded layer is W + s*BA, not "
           "W_res + s*BA; peft converts with path_initial_model_for_weight_conversion instead",
           "W_res is cast to the base dtype on copy (bf16 base: rounded)"),
    layer_types=_TYPES,
    make_config=_make_lora,
    peft_exports=("LoraConfig", "LoraGAConfig", "preprocess_loraga"),
    since="0.19.0",
    nested=(("lora_ga_config", "LoraGAConfig"),),
    subject_config=_subject_config,
    subject_defaults=_subject_defaults,
)
