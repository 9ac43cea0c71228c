"""OLoRA mapping onto peft's LoraConfig(init_lora_weights="olora") / peft.tuners.lora.layer.Linear.

Same tensors and forward as LoRA (lora_A (r, d_in), lora_B (d_out, r); base(x) + s·lora_B(lora_A(x)),
peft/tuners/lora/layer.py:278-281 for s), with the base weight replaced by W_res at init
(LoraLayer.olora_init, peft/tuners/lora/layer.py:384-427). For the parity twin the bridge runs the cheap
init (init_lora_weights=True) and copies A, B and W_res in, like PiSSA's mapping.
"""
from __future__ import annotations

from ._core import ConfigField, VariantMapping, with_rest
from .lora import _A, _B, _COMMON, W_RES, BIAS_ELSEWHERE, LORA_CLASS_REST, _make_lora

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _subject_config(cfg, targets, conv1d, make):
    """peft's own OLoRA init for the subject: its QR (float32, peft/tuners/lora/layer.py:400-401), its W_res."""
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("LoraConfig", r=int(cfg.get("r", 8)), lora_alpha=float(cfg.get("alpha", 8.0)),
                use_rslora=bool(cfg.get("use_rslora", False)), lora_dropout=0.0, init_lora_weights="olora",
                **fif, **targets)


def _subject_defaults(defaults):
    d = defaults("LoraConfig")
    return {"r": d["r"], "alpha": float(d["lora_alpha"]), "use_rslora": d["use_rslora"]}


OLORA = VariantMapping(
    variant="olora",
    peft_config_class="peft.LoraConfig",
    peft_layer_class="peft.tuners.lora.layer.Linear",
    tensors=(_A, _B, W_RES),
    config=with_rest(_COMMON + (ConfigField("use_rslora", "use_rslora"),
                                ConfigField(None, "init_lora_weights",
                                            "True, NOT 'olora': peft's 'olora' init would run its own float32 QR, "
                                            "overwrite base_layer.weight with its W_res (and on Conv1D decompose the "
                                            "stored Wᵀ); the bridge instead copies the given A, B and W_res",
                                            effect="init")), BIAS_ELSEWHERE + LORA_CLASS_REST),
    init="init_lora_weights=True (cheap kaiming/zero init), then A, B and W_res are overwritten: no QR runs in peft",
    notes=("merged weight W_res + scaling*B A, same forward as LoRA; disabling the adapter gives W_res, not W",
           "peft's own olora_init: QR in float32 of the weight as stored, no sign fix, A = R[:r], B = Q[:, :r], "
           "W -= scaling*B A (peft/tuners/lora/layer.py:384-427); float64 bases raise TypeError (:393-396)",
           "peft's olora_init never transposes a Conv1D weight (compare pissa_init, :437): square Conv1D gives a "
           "wrong init, non-square gives A (r, d_out), B (d_in, r)",
           "r > min(d_in, d_out): peft's A, B silently get min(d_in, d_out) rows/columns while scaling keeps r",
           "W_res is cast to the base dtype on copy (bf16 base: rounded)"),
    layer_types=_TYPES,
    make_config=_make_lora,
    peft_exports=("LoraConfig",),
    since="0.12.0",
    subject_config=_subject_config,
    subject_defaults=_subject_defaults,
)
