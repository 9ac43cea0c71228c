"""FourierFT mapping onto peft's FourierFTConfig / peft.tuners.fourierft.layer.FourierFTLinear.

peft forward: base(x) + F.linear(x, ΔW), ΔW = torch.fft.ifft2(dense).real · scaling, dense (d_out, d_in) zero
but for dense[indices[0], indices[1]] = fourierft_spectrum (peft/tuners/fourierft/layer.py get_delta_weight,
FourierFTLinear.forward). The entries are redrawn per layer from random_loc_seed (update_layer:
torch.randperm(d_out·d_in, Generator().manual_seed(seed))[:n], rows idx // d_in, columns idx % d_in) into a
plain dict ``indices``, never saved: the canonical state is the spectrum alone, and the same seed gives
both sides the same entries (references/paper/fourierft.py entry_matrix).
"""
from __future__ import annotations

from ._core import TARGETING, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields

_TYPES = ("torch.nn.Linear", "transformers.pytorch_utils.Conv1D")


def _fields(cfg) -> dict:
    return {"n_frequency": int(cfg.get("n_frequency", 1000)), "scaling": float(cfg.get("scaling", 150.0)),
            "random_loc_seed": int(cfg.get("random_loc_seed", 777)),
            "init_weights": cfg.get("init_weights", "normal") == "zeros"}


def _make(cfg, names, states, infos):
    from peft import FourierFTConfig

    conv1d = any(i.conv1d for i in infos.values())
    return FourierFTConfig(**_fields(cfg), fan_in_fan_out=conv1d, bias="none",
                           target_modules=exact_target_regex(names)), names


def _subject(cfg, targets, conv1d, make):
    fif = {"fan_in_fan_out": True} if conv1d else {}
    return make("FourierFTConfig", **_fields(cfg), **fif, **targets)


FOURIERFT = VariantMapping(
    variant="fourierft",
    peft_config_class="peft.FourierFTConfig",
    peft_layer_class="peft.tuners.fourierft.layer.FourierFTLinear",
    tensors=(TensorMap("spectrum", "fourierft_spectrum.default", "identity",
                       note="(n,) trainable coefficients c; the entries (peft's indices dict) follow from the seed"),),
    config=(ConfigField("n_frequency", "n_frequency"),
            ConfigField("scaling", "scaling"),
            ConfigField("random_loc_seed", "random_loc_seed", "copied: the seed of the entry permutation"),
            ConfigField("init_weights", "init_weights", "True for 'zeros' (c = 0), False for 'normal' (c ~ N(0, 1))"),
            ConfigField(None, "n_frequency_pattern", "not set (every layer takes n_frequency)", effect="per-layer"),
            ConfigField(None, "fan_in_fan_out", "True iff the targets are transformers Conv1D", effect="layout"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)",
                        effect="placement"),
            ConfigField(None, "bias", "fixed 'none'", effect="placement"),
            *targeting_fields(*TARGETING)),
    init="peft draws c ~ N(0, 1) (init_weights=False) or zeroes it (True); the state overwrites it. The entries "
         "are peft's own draw from random_loc_seed",
    notes=("peft builds ΔW in float32 (dense_spectrum is torch.zeros' default dtype) and casts it to the "
           "spectrum's dtype",),
    layer_types=_TYPES,
    make_config=_make,
    peft_exports=("FourierFTConfig",),
    since="0.12.0",
    subject_config=_subject,
    subject_defaults=lambda defaults: {
        "n_frequency": int(defaults("FourierFTConfig")["n_frequency"]),
        "scaling": float(defaults("FourierFTConfig")["scaling"]),
        "random_loc_seed": int(defaults("FourierFTConfig")["random_loc_seed"]),
        "init_weights": "zeros" if defaults("FourierFTConfig")["init_weights"] else "normal"},
)
