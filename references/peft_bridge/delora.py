"""DeLoRA mapping onto peft's DeloraConfig / peft.tuners.delora.layer.DeloraLinear.

peft forward: base(x) + ((x * w_norm) A^T * (lambda/r) / (max(||a_i||,1e-4) max(||b_i||,1e-4))) B^T, with
w_norm = ||W[:, j]|| per input column, captured once at init (persistent buffer delora_w_norm).
peft has no frozen copy (C = A_0, D = B_0) of the paper's init, so a state with that term is refused.
"""
from __future__ import annotations

from ._core import (TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields, with_rest)


def _check_delora(cfg, states):
    has_frozen = sorted({k for s in states.values() for k in s if k in ("C", "D")})
    if cfg.get("init_style") == "paper" or has_frozen:
        raise BridgeUnsupported(
            "DeLoRA with init_style='paper' (frozen copy C = A0, D = B0; dW = (lambda/r)(B Xi_AB A - D Xi_CD C) "
            "diag(w)) has no peft counterpart: peft's DeloraLinear has only delora_A, delora_B, delora_lambda and "
            "delora_w_norm. Folding the frozen term into the base weight would match outputs only while lambda "
            "is unchanged, and lambda's gradient would differ, so the bridge refuses; audit peft parity with "
            f"init_style='peft' (state keys seen: {has_frozen or 'no C/D'})")


def _make_delora(cfg, names, states, infos):
    from peft import DeloraConfig

    return DeloraConfig(r=int(cfg.get("r", 8)), delora_lambda=float(cfg.get("lambda0", 15.0)), module_dropout=0.0,
                        init_weights=True, bias="none", target_modules=exact_target_regex(names)), names


def _subject_delora(cfg, targets, conv1d, make):
    if cfg.get("init_style", "peft") != "peft":
        from ._core import BridgeUnsupported
        raise BridgeUnsupported("peft's DeLoRA has no frozen-copy (init_style 'paper') init")
    return make("DeloraConfig", r=int(cfg.get("r", 8)), delora_lambda=float(cfg.get("lambda0", 15.0)),
                init_weights=True, **targets)


def _subject_delora_defaults(defaults):
    d = defaults("DeloraConfig")
    return {"r": d["r"], "lambda0": float(d["delora_lambda"]), "init_style": "peft"}


DELORA = VariantMapping(
    variant="delora",
    peft_config_class="peft.DeloraConfig",
    peft_layer_class="peft.tuners.delora.layer.DeloraLinear",
    tensors=(TensorMap("A", "delora_A.default", "identity", note="nn.Parameter (r, d_in)"),
             TensorMap("B", "delora_B.default", "identity", note="nn.Parameter (d_out, r)"),
             TensorMap("lam", "delora_lambda.default", "identity", note="nn.Parameter (1,), trainable"),
             TensorMap("w_norm", "delora_w_norm.default", "identity", kind="buffer",
                       note="persistent BufferDict buffer (d_in,), frozen; peft computes ||W||_col at init "
                            "(all ones on the meta device); overwritten by the state's w_norm")),
    config=with_rest((ConfigField("r", "r"),
            ConfigField("lambda0", "delora_lambda", "copied (annotated int in peft, a float is accepted); only the "
                                                    "init value of delora_lambda, which the state's lam overwrites"),
            ConfigField(None, "module_dropout", "fixed 0.0 (despite its name: elementwise dropout of the input)", effect="stochastic"),
            ConfigField("init_style", "init_weights", "'peft' -> True (B = 0); 'paper' -> BridgeUnsupported"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement")), targeting_fields(*TARGETING) + (ConfigField(None, "rank_pattern", "not set: one r for every layer", "per-layer"),
                    ConfigField(None, "lambda_pattern", "not set: one lambda for every layer", "per-layer"))),
    init="A kaiming, B = 0, lambda = delora_lambda, w_norm from the base weight; all overwritten by the state",
    notes=("both norms are clamped at 1e-4 in peft, as in the canonical formula",
           "C, D (paper init) are refused with BridgeUnsupported"),
    make_config=_make_delora,
    check_state=_check_delora,
    peft_exports=("DeloraConfig",),
    since="0.18.0",
    subject_config=_subject_delora,
    subject_defaults=_subject_delora_defaults,
)
