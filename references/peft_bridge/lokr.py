"""LoKr mapping onto peft's LoKrConfig / peft.tuners.lokr.layer.Linear.

peft forward (eval, rank/module dropout 0): base(x) + F.linear(x, ΔW), ΔW = kron(w1, w2)·(alpha/r) with
w1 = lokr_w1 or lokr_w1_a @ lokr_w1_b, w2 = lokr_w2 or lokr_w2_a @ lokr_w2_b (peft/tuners/lokr/layer.py:256-287,
:336-343). Which tensors a layer has follows LyCORIS's factorization and low-rank rule (:199-204), the same
rule as the canonical layout (references/paper/lokr.py), and the names are the canonical ones, so every copy
is the identity. peft keeps scaling = alpha/r (:189) also when both factors are full, where the canonical
formula (LyCORIS) has γ = 1: the twin gets alpha = r on exactly those layers (alpha_pattern), so it computes
the canonical ΔW; peft as the *subject* runs with the user's alpha and that departure is measured there.
"""
from __future__ import annotations

from ._core import (TARGETING, BridgeUnsupported, ConfigField, TensorMap, VariantMapping, exact_pattern_key, exact_target_regex, targeting_fields, with_rest)

_NAMES = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")
_SHAPES = {"w1": "(out_l, in_m)", "w1_a": "(out_l, r)", "w1_b": "(r, in_m)",
           "w2": "(out_k, in_n)", "w2_a": "(out_k, r)", "w2_b": "(r, in_n)"}


_PATTERNS = (ConfigField(None, "rank_pattern", "not set: one r for every layer", "per-layer"),
             ConfigField(None, "alpha_pattern", "not set: one alpha for every layer", "per-layer"))


def _full_full(state) -> bool:
    return "w1" in state and "w2" in state


def _make_lokr(cfg, names, states, infos):
    from peft import LoKrConfig

    r, alpha = int(cfg.get("r", 8)), float(cfg.get("alpha", 8.0))
    # canonical γ = 1 with two full factors: peft's alpha/r equals it when alpha = r on those layers
    pattern = {exact_pattern_key(n): float(r) for n in names if _full_full(states[n]) and alpha != r}
    return LoKrConfig(r=r, alpha=alpha, alpha_pattern=pattern, decompose_both=bool(cfg.get("decompose_both", False)),
                      decompose_factor=int(cfg.get("decompose_factor", -1)), rank_dropout=0.0, module_dropout=0.0,
                      init_weights=True, target_modules=exact_target_regex(names)), names


def _check_lokr(cfg, states):
    from references.paper.lokr import INIT_STYLES
    if cfg.get("init_style", "lycoris") not in INIT_STYLES:
        raise BridgeUnsupported(f"LoKr init_style {cfg.get('init_style')!r}: peft has {INIT_STYLES}")


def _subject_lokr(cfg, targets, conv1d, make):
    """peft's own LoKr: the user's r and alpha (so alpha/r also on two full factors), its init by style."""
    style = cfg.get("init_style", "lycoris")
    if style not in ("lycoris", "peft"):
        raise BridgeUnsupported(f"peft's LoKr has no init_style {style!r} (init_weights: True or 'lycoris')")
    if style == "lycoris":
        import peft
        from packaging.version import Version
        if Version(peft.__version__) < Version("0.17.0"):  # before it, "lycoris" is just a truthy value
            raise BridgeUnsupported(f"peft {peft.__version__} LoKrConfig has no init_weights='lycoris' "
                                    "(peft >= 0.17.0): its init would silently be the default (w1 = 0)")
    return make("LoKrConfig", r=int(cfg.get("r", 8)), alpha=float(cfg.get("alpha", 8.0)),
                decompose_both=bool(cfg.get("decompose_both", False)),
                decompose_factor=int(cfg.get("decompose_factor", -1)), rank_dropout=0.0, module_dropout=0.0,
                init_weights="lycoris" if style == "lycoris" else True, **targets)


def _subject_lokr_defaults(defaults):
    d = defaults("LoKrConfig")
    iw = d["init_weights"]
    return {"r": d["r"], "alpha": float(d["alpha"]), "decompose_both": d["decompose_both"],
            "decompose_factor": d["decompose_factor"], "init_style": "lycoris" if iw == "lycoris" else "peft"}


LOKR = VariantMapping(
    variant="lokr",
    peft_config_class="peft.LoKrConfig",
    peft_layer_class="peft.tuners.lokr.layer.Linear",
    tensors=tuple(TensorMap(n, f"lokr_{n}.default", "identity", optional=True,
                            note=f"ParameterDict entry {_SHAPES[n]}; present only on the branch the layer's shape and "
                                 "r select (w1 or w1_a/w1_b, w2 or w2_a/w2_b)") for n in _NAMES),
    config=with_rest((ConfigField("r", "r"),
            ConfigField("alpha", "alpha", "copied; on layers where both factors are full, alpha_pattern "
                                          "{'^'+re.escape(name): r} so peft's alpha/r equals the canonical γ = 1"),
            ConfigField("decompose_both", "decompose_both"),
            ConfigField("decompose_factor", "decompose_factor"),
            ConfigField(None, "rank_dropout", "fixed 0.0 (drops output rows of ΔW in training)", effect="stochastic"),
            ConfigField(None, "module_dropout", "fixed 0.0 (skips the adapter at random in training)", effect="stochastic"),
            ConfigField("init_style", "init_weights", "True for the twin (overwritten by the state); the subject "
                                                      "maps 'lycoris' -> 'lycoris' (peft >= 0.17.0), 'peft' -> True"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement")), targeting_fields(*TARGETING) + _PATTERNS + (ConfigField(None, "use_effective_conv2d", "Conv2d only", "layer-type"),
                    ConfigField(None, "rank_dropout_scale", "unused: it rescales rank_dropout, which is 0", "stochastic"))),
    init="init_weights=True (lokr_w1 or lokr_w1_a = 0, kaiming elsewhere); overwritten by the given state",
    notes=("ΔW = kron(w1, w2)·alpha/r reshaped to W's shape (a no-op for nn.Linear): torch.kron order, w1 the "
           "(out_l, in_m) block grid, w2 the block",
           "peft's scaling is alpha/r even with two full factors (LyCORIS: 1); the bridge compensates per layer",
           "transformers Conv1D is refused (LoKrModel.layers_mapping: Linear, Conv1d, Conv2d only)"),
    make_config=_make_lokr,
    check_state=_check_lokr,
    peft_exports=("LoKrConfig",),
    since="0.6.0",
    subject_config=_subject_lokr,
    subject_defaults=_subject_lokr_defaults,
)
