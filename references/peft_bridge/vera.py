"""VeRA mapping onto peft's VeraConfig / peft.tuners.vera.layer.Linear.

peft forward (eval, vera_dropout 0): base(x) + λ_b ⊙ F.linear(λ_d ⊙ F.linear(x, A[:, :d_in]), B[:d_out, :])
(peft/tuners/vera/layer.py:280-285), i.e. W_eff = W + diag(λ_b) B_s diag(λ_d) A_s, bias unchanged. The shared
pair lives in VeraModel's BufferDicts vera_A / vera_B, sized by the largest targeted layer
(peft/tuners/vera/model.py:113-157), and every layer's vera_A / vera_B refers to the same dict
(layer.py:93-94): the canonical A, B are that whole pair (references/paper/vera.py), so the copy is the identity.
"""
from __future__ import annotations

import torch

from ._core import (TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields, with_rest)

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _make_vera(cfg, names, states, infos):
    from peft import VeraConfig

    conv1d = any(i.conv1d for i in infos.values())
    return VeraConfig(r=int(cfg.get("r", 256)), projection_prng_key=int(cfg.get("seed", 0)), save_projection=True,
                      vera_dropout=0.0, d_initial=float(cfg.get("d_initial", 0.1)), init_weights=True,
                      fan_in_fan_out=conv1d, bias="none", target_modules=exact_target_regex(names)), names


def _check_vera(cfg, states):
    """peft holds ONE pair for all layers: the states must give every layer the same A and B."""
    first = None
    for n, st in states.items():
        pair = (st["A"], st["B"])
        if first is None:
            first = (n, pair)
            continue
        same = all(p.shape == q.shape and torch.equal(p.detach().cpu(), q.detach().cpu())
                   for p, q in zip(pair, first[1]))
        if not same:
            raise BridgeUnsupported(f"peft's VeRA shares one A, B pair across layers, but the state's pair on {n} "
                                    f"differs from that on {first[0]}: no peft counterpart")


def _subject_vera(cfg, targets, conv1d, make):
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("VeraConfig", r=int(cfg.get("r", 256)), projection_prng_key=int(cfg.get("seed", 0)),
                save_projection=True, vera_dropout=0.0, d_initial=float(cfg.get("d_initial", 0.1)),
                init_weights=True, **fif, **targets)


VERA = VariantMapping(
    variant="vera",
    peft_config_class="peft.VeraConfig",
    peft_layer_class="peft.tuners.vera.layer.Linear",
    tensors=(TensorMap("A", "vera_A.default", "identity", kind="buffer",
                       note="the whole shared (r, D_in) matrix, D_in = the largest d_in among the targets; the layer "
                            "uses A[:, :d_in]; one tensor for every layer"),
             TensorMap("B", "vera_B.default", "identity", kind="buffer",
                       note="the whole shared (D_out, r) matrix; the layer uses B[:d_out, :]"),
             TensorMap("lambda_b", "vera_lambda_b.default", "identity", note="(d_out,), trainable"),
             TensorMap("lambda_d", "vera_lambda_d.default", "identity", note="(r,), trainable")),
    config=with_rest((ConfigField("r", "r"),
            ConfigField("d_initial", "d_initial"),
            ConfigField("seed", "projection_prng_key", "copied: our seed is VeRA's projection PRNG key (both draw "
                                                        "A then B from torch.Generator().manual_seed(key))"),
            ConfigField(None, "save_projection", "fixed True (A, B in the checkpoint)", effect="checkpoint"),
            ConfigField(None, "vera_dropout", "fixed 0.0", effect="stochastic"),
            ConfigField(None, "init_weights", "True (λ_b = 0, λ_d = d_initial); overwritten by the state", effect="init"),
            ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D", effect="layout"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement")), targeting_fields(*TARGETING)),
    init="peft draws the pair from the PRNG key and sets λ_b = 0, λ_d = d_initial; the state overwrites all four "
         "(the pair once per layer, the same values each time)",
    notes=("A, B are buffers shared by every layer; a state whose layers hold different pairs has no peft "
           "counterpart (BridgeUnsupported)",
           "over a bf16/fp16 base with float32 adapters peft casts λ_d, A, B to the base dtype before upcasting "
           "(layer.py:132), so its own init rounds them; copied states are exact"),
    layer_types=_TYPES,
    make_config=_make_vera,
    check_state=_check_vera,
    peft_exports=("VeraConfig",),
    since="0.11.0",
    subject_config=_subject_vera,
    subject_defaults=lambda defaults: {"r": defaults("VeraConfig")["r"],
                                       "d_initial": float(defaults("VeraConfig")["d_initial"])},
)
