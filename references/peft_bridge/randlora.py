"""RandLoRA mapping onto peft's RandLoraConfig / peft.tuners.randlora.layer.Linear.

peft forward (eval, randlora_dropout 0; tuners/randlora/layer.py Linear.forward, get_scaled_bases): with m/M the
layer's min/max(d_in, d_out), n = ⌈m/r⌉, B_flat = B[:M, :n, :].flatten(1) (M, n·r) and
A_flat = (λ[:, :, None]·A[:, :n, :m]·γ[None]).flatten(0, 1) (r·n, m) (UniqueBaseGrad), it adds
s·F.linear(F.linear(x, A_flat), B_flat) when d_in ≤ d_out, else s·F.linear(F.linear(x, B_flatᵀ), A_flatᵀ):
W_eff = W + s·B_flat A_flat (transposed when d_in > d_out), s = randlora_alpha / r, bias unchanged. The shared
bases live in RandLoraModel's BufferDicts randlora_A (r, 1, m*) / randlora_B (M*, N, r), sized by the largest
targeted layer (model.py _find_dim, _init_randlora_A_randlora_B), and every layer refers to the same dict: the
canonical A, B are that whole pair (references/paper/randlora.py), so the copy is the identity.
"""
from __future__ import annotations

import torch

from ._core import (TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping, exact_target_regex,
                    targeting_fields, with_rest)

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _fields(cfg) -> dict:
    return {"r": int(cfg.get("r", 32)), "randlora_alpha": float(cfg.get("alpha", 640.0)),
            "projection_prng_key": int(cfg.get("seed", 0)), "sparse": bool(cfg.get("sparse", False)),
            "very_sparse": bool(cfg.get("very_sparse", False))}


def _make(cfg, names, states, infos):
    from peft import RandLoraConfig

    conv1d = any(i.conv1d for i in infos.values())
    return RandLoraConfig(**_fields(cfg), save_projection=True, randlora_dropout=0.0, init_weights=True,
                          fan_in_fan_out=conv1d, bias="none", target_modules=exact_target_regex(names)), names


def _check(cfg, states):
    """peft holds ONE pair of bases for all layers: the states must give every layer the same A and B."""
    first = None
    for n, st in states.items():
        pair = (st["A"], st["B"])
        if first is None:
            first = (n, pair)
            continue
        same = all(p.shape == q.shape and torch.equal(p.detach().cpu(), q.detach().cpu())
                   for p, q in zip(pair, first[1]))
        if not same:
            raise BridgeUnsupported(f"peft's RandLoRA shares one pair of bases A, B across layers, but the state's "
                                    f"pair on {n} differs from that on {first[0]}: no peft counterpart")


def _subject(cfg, targets, conv1d, make):
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("RandLoraConfig", **_fields(cfg), save_projection=True, randlora_dropout=0.0, init_weights=True,
                **fif, **targets)


def _defaults(defaults):
    d = defaults("RandLoraConfig")
    return {"r": d["r"], "alpha": float(d["randlora_alpha"]), "sparse": bool(d["sparse"]),
            "very_sparse": bool(d["very_sparse"])}


RANDLORA = VariantMapping(
    variant="randlora",
    peft_config_class="peft.RandLoraConfig",
    peft_layer_class="peft.tuners.randlora.layer.Linear",
    tensors=(TensorMap("A", "randlora_A.default", "identity", kind="buffer",
                       note="the whole shared (r, 1, m*) basis, m* = min of the largest (d_out, d_in) among the "
                            "targets; the layer uses A[:, 0, :m]; one tensor for every layer"),
             TensorMap("B", "randlora_B.default", "identity", kind="buffer",
                       note="the whole shared (M*, N, r) bases; the layer uses B[:M, :n, :]"),
             TensorMap("lambda", "randlora_lambda.default", "identity", note="(r, n), trainable (Λ_j = diag of column j)"),
             TensorMap("gamma", "randlora_gamma.default", "identity", note="(n, m), trainable (Γ_j = diag of row j)")),
    config=with_rest((ConfigField("r", "r"),
            ConfigField("alpha", "randlora_alpha", "copied: s = randlora_alpha / r on both sides"),
            ConfigField("seed", "projection_prng_key", "copied: our seed is the projection PRNG key (the streams "
                                                        "differ: peft draws in bfloat16; the state overwrites them)"),
            ConfigField("sparse", "sparse", "copied: ternary bases, P(±1) = 1/6 each"),
            ConfigField("very_sparse", "very_sparse", "copied: ternary bases, P(±1) = 1/(2√m*) each"),
            ConfigField(None, "save_projection", "fixed True (A, B in the checkpoint)", effect="checkpoint"),
            ConfigField(None, "randlora_dropout", "fixed 0.0", effect="stochastic"),
            ConfigField(None, "init_weights", "True (λ = 0, γ = 1/m); overwritten by the state", effect="init"),
            ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D", effect="layout"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement")), targeting_fields(*TARGETING)),
    init="peft draws the bases from the PRNG key (bfloat16 kaiming-uniform, or ternary, each over its std) and sets "
         "λ = 0, γ = 1/m; the state overwrites all four (the pair once per layer, the same values each time)",
    notes=("A, B are buffers shared by every layer; a state whose layers hold different pairs has no peft "
           "counterpart (BridgeUnsupported)",
           "peft's dense bases are drawn in bfloat16 (model.py _kaiming_init, is_bf16_available()) and upcast to "
           "the adapter dtype; copied states are exact"),
    layer_types=_TYPES,
    make_config=_make,
    check_state=_check,
    peft_exports=("RandLoraConfig",),
    since="0.16.0",
    subject_config=_subject,
    subject_defaults=_defaults,
)
