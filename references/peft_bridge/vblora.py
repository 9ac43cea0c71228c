"""VB-LoRA mapping onto peft's VBLoRAConfig / peft.tuners.vblora.layer.Linear.

peft forward (eval, vblora_dropout 0): base(x) + F.linear(F.linear(x, A), B) with A = the top-k admixture of
logits_A reshaped (r, d_in) and B = that of logits_B, (d_out/b, r, b) -> transpose(1, 2) -> (d_out, r)
(peft/tuners/vblora/layer.py _get_low_rank_matrix, _get_lora_matrices), i.e. W_eff = W + BA, bias unchanged.
The bank is VBLoRAModel's ParameterDict vblora_vector_bank (peft/tuners/vblora/model.py
_init_vblora_vector_bank), which every layer holds as its own attribute: one trainable tensor, so the
canonical ``bank`` is copied into it once per layer, the same values each time.
"""
from __future__ import annotations

import torch

from ._core import (TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping, exact_target_regex,
                    targeting_fields, with_rest)

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")
_AXES = ("r", "num_vectors", "vector_length", "topk", "init_vector_bank_bound", "init_logits_std")


def _fields(cfg) -> dict:
    return {"r": int(cfg.get("r", 4)), "num_vectors": int(cfg.get("num_vectors", 256)),
            "vector_length": int(cfg.get("vector_length", 256)), "topk": int(cfg.get("topk", 2)),
            "init_vector_bank_bound": float(cfg.get("init_vector_bank_bound", 0.02)),
            "init_logits_std": float(cfg.get("init_logits_std", 0.1)),
            "save_only_topk_weights": bool(cfg.get("save_only_topk_weights", False))}


def _make_vblora(cfg, names, states, infos):
    from peft import VBLoRAConfig

    conv1d = any(i.conv1d for i in infos.values())
    return VBLoRAConfig(**_fields(cfg), vblora_dropout=0.0, fan_in_fan_out=conv1d, bias="none",
                        target_modules=exact_target_regex(names)), names


def _check_vblora(cfg, states):
    """peft holds ONE bank for all layers: the states must give every layer the same bank."""
    first = None
    for n, st in states.items():
        if first is None:
            first = (n, st["bank"])
        elif st["bank"].shape != first[1].shape or not torch.equal(st["bank"].detach().cpu(), first[1].detach().cpu()):
            raise BridgeUnsupported(f"peft's VB-LoRA shares one vector bank across layers, but the state's bank on {n} "
                                    f"differs from that on {first[0]}: no peft counterpart")


def _subject_vblora(cfg, targets, conv1d, make):
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("VBLoRAConfig", **_fields(cfg), vblora_dropout=0.0, **fif, **targets)


def _defaults(defaults) -> dict:
    d = defaults("VBLoRAConfig")
    return {k: d[k] for k in _AXES}


VBLORA = VariantMapping(
    variant="vblora",
    peft_config_class="peft.VBLoRAConfig",
    peft_layer_class="peft.tuners.vblora.layer.Linear",
    tensors=(TensorMap("bank", "vblora_vector_bank.default", "identity",
                       note="(num_vectors, vector_length), ONE trainable tensor every layer holds"),
             TensorMap("logits_A", "vblora_logits_A.default", "identity", note="(r, d_in/b, num_vectors)"),
             TensorMap("logits_B", "vblora_logits_B.default", "identity", note="(d_out/b, r, num_vectors)")),
    config=with_rest((ConfigField("r", "r"),
            ConfigField("num_vectors", "num_vectors"),
            ConfigField("vector_length", "vector_length"),
            ConfigField("topk", "topk"),
            ConfigField("init_vector_bank_bound", "init_vector_bank_bound"),
            ConfigField("init_logits_std", "init_logits_std"),
            ConfigField("save_only_topk_weights", "save_only_topk_weights",
                        "copied: the saved file holds the top-k indices and k−1 softmax weights of each logits "
                        "row instead of the logits (peft's _get_adapter_state_dict; rebuilt as log-weights and −∞ "
                        "on load)"),
            ConfigField(None, "vblora_dropout", "fixed 0.0", effect="stochastic"),
            ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D", effect="placement"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement")), targeting_fields(*TARGETING)),
    init="peft draws the bank U(±init_vector_bank_bound) (once per targeted layer, the last draw kept) and every "
         "layer's logits N(0, init_logits_std²); the state overwrites all three",
    notes=("the bank is shared by every layer; a state whose layers hold different banks has no peft counterpart "
           "(BridgeUnsupported)",
           "over a bf16/fp16 base with float32 adapters peft casts the logits and the bank to the base dtype "
           "before upcasting them (_move_adapter_to_device_of_base_layer), so its own init rounds them; copied "
           "states are exact"),
    layer_types=_TYPES,
    make_config=_make_vblora,
    check_state=_check_vblora,
    peft_exports=("VBLoRAConfig",),
    since="0.13.0",  # VB-LoRA merged after 0.12.0 (huggingface/peft#2039, #2072)
    subject_config=_subject_vblora,
    subject_defaults=_defaults,
)
