"""C3A mapping onto peft's C3AConfig / peft.tuners.c3a.layer.C3ALinear.

peft forward: base(x) + BlockCircularConvolution.apply(x.float(), c3a_kernel.float()) / d_in
(peft/tuners/c3a/layer.py C3ALinear.forward; utils.py BlockCircularConvolution.forward: fft(ifft(x_j) ⊙ fft(w_ij))
summed over j, i.e. y_i[l] = Σ_j Σ_p w_ij[p] x_j[(l + p) mod b], the circulant whose first row is w_ij). Merge:
get_circulant_fast(w)/d_in (the same matrix). c3a_kernel is (d_out/b, d_in/b, b), our layout: copied as is.
"""
from __future__ import annotations

from ._core import ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields


def _init(cfg):
    how = cfg.get("init_weights", "xavier_uniform")
    return True if how == "zeros" else how


def _make(cfg, names, states, infos):
    from peft import C3AConfig

    return C3AConfig(block_size=int(cfg.get("block_size", 256)), init_weights=_init(cfg), bias="none",
                     target_modules=exact_target_regex(names)), names


def _subject(cfg, targets, conv1d, make):
    return make("C3AConfig", block_size=int(cfg.get("block_size", 256)), init_weights=_init(cfg), **targets)


def _defaults(defaults):
    d = defaults("C3AConfig")
    init = d["init_weights"]
    return {"block_size": int(d["block_size"]),
            "init_weights": "zeros" if init is True else ("xavier_uniform" if init is False else init)}


C3A = VariantMapping(
    variant="c3a",
    peft_config_class="peft.C3AConfig",
    peft_layer_class="peft.tuners.c3a.layer.C3ALinear",
    tensors=(TensorMap("kernel", "c3a_kernel.default", "identity",
                       note="(d_out/b, d_in/b, b): kernel[i, j] is the first row of the circulant block (i, j)"),),
    config=(ConfigField("block_size", "block_size"),
            ConfigField("init_weights", "init_weights", "True for 'zeros', else the same name (peft reads False "
                                                        "as 'xavier_uniform')"),
            ConfigField(None, "block_size_pattern", "not set (every layer takes block_size)", effect="per-layer"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement"),
            *targeting_fields("exclude_modules", "modules_to_save", "layers_to_transform", "layers_pattern")),
    init="peft draws the kernel by init_weights (xavier_uniform by default) or zeroes it (True); the state overwrites it",
    notes=("peft computes in float32 (the kernel is created float32, x is cast to float32) and adds the result in "
           "the base dtype",
           "peft's BlockCircularConvolution.backward returns a wrong input gradient for b ≥ 3 (the correlation with "
           "the kernel again instead of the convolution, C(w_ij)ᵀ); the kernel's own gradient is right "
           "(audit/cards/c3a.py declares it)"),
    make_config=_make,
    peft_exports=("C3AConfig",),
    since="0.15.0",
    subject_config=_subject,
    subject_defaults=_defaults,
)
