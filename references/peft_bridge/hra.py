"""HRA mapping onto peft's HRAConfig / peft.tuners.hra.layer.HRALinear.

peft forward (apply_GS=False): R = H(u_0) H(u_1) ... H(u_{r-1}) built densely (d_in x d_in) from the normalised
columns of hra_u, then F.linear(x, W R, b): W_eff = W H_0 ... H_{r-1}, bias unchanged.
"""
from __future__ import annotations

from ._core import TARGETING, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields


def _make_hra(cfg, names, states, infos):
    from peft import HRAConfig

    r = int(cfg.get("r", 8))
    # peft's symmetric init needs even r (odd r: it warns and draws a random init); the init is overwritten anyway
    return HRAConfig(r=r, apply_GS=bool(cfg.get("apply_gs", False)), init_weights=(r % 2 == 0), bias="none",
                     target_modules=exact_target_regex(names)), names


HRA = VariantMapping(
    variant="hra",
    peft_config_class="peft.HRAConfig",
    peft_layer_class="peft.tuners.hra.layer.HRALinear",
    tensors=(TensorMap("u", "hra_u.default", "transpose",
                       note="canonical u is (r, d_in) with u_i as ROW i; peft's hra_u is (d_in, r) with u_i as "
                            "COLUMN i"),),
    config=(ConfigField("r", "r"),
            ConfigField("apply_gs", "apply_GS", "copied (Gram-Schmidt first: R = I - 2QQ^T, one reflection through span(u))"),
            ConfigField(None, "init_weights", "True for even r (symmetric init), False for odd r (avoids peft's "
                                              "warning); overwritten by the state either way", effect="init"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement"),
            *targeting_fields(*TARGETING)),
    init="symmetric init (pairs of equal columns); overwritten by the given u",
    notes=("reflection order: W R with R = H_0 H_1 ... H_{r-1} (index order), input side",
           "the orthogonality regulariser is not part of peft (nor of the forward)",
           "peft builds R starting from torch.eye in float32, cast to hra_u's dtype: float64 bases stay float64"),
    make_config=_make_hra,
    peft_exports=("HRAConfig",),
    since="0.12.0",
    subject_config=lambda cfg, targets, conv1d, make: make(
        "HRAConfig", r=int(cfg.get("r", 8)), apply_GS=bool(cfg.get("apply_gs", False)), init_weights=True, **targets),
    subject_defaults=lambda defaults: {"r": defaults("HRAConfig")["r"]},
)
