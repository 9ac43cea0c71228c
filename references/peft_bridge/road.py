"""RoAd mapping onto peft's RoadConfig / peft.tuners.road.layer.Linear.

peft forward: y = base(x) (bias included), then per group of group_size outputs, position j pairs with j + g/2:
y'_j = c_j y_j - s_j y_{j+g/2}, y'_{j+g/2} = c_{j+g/2} y_{j+g/2} + s_{j+g/2} y_j (peft.tuners.road.layer._apply_road).
The canonical theta/alpha layouts (references/STATE_LAYOUT.md) are peft's flat layouts, so the copy is the identity.
"""
from __future__ import annotations

from ._core import TARGETING, ConfigField, TensorMap, VariantMapping, exact_target_regex, targeting_fields, with_rest


def _make_road(cfg, names, states, infos):
    from peft import RoadConfig

    return RoadConfig(variant=str(cfg.get("road_variant", "road_1")), group_size=int(cfg.get("group_size", 64)),
                      init_weights=True, target_modules=exact_target_regex(names)), names


_SIZE = "d_out/2 (road_1), d_out (road_2), 2*d_out (road_4)"

ROAD = VariantMapping(
    variant="road",
    peft_config_class="peft.RoadConfig",
    peft_layer_class="peft.tuners.road.layer.Linear",
    tensors=(TensorMap("theta", "road_theta.default", "identity", note=f"flat ({_SIZE})"),
             TensorMap("alpha", "road_alpha.default", "identity", note=f"flat ({_SIZE})")),
    config=with_rest((ConfigField("road_variant", "variant"),
            ConfigField("group_size", "group_size", "copied (peft: even, must divide d_out of every target)"),
            ConfigField(None, "init_weights", "True (theta = 0, alpha = 1); overwritten by the state", effect="init"),
            ConfigField(None, "target_modules", "regex (?:name1|...) of the escaped full dotted names (fullmatch)", effect="placement")), targeting_fields(*TARGETING)),
    init="theta = 0, alpha = 1 (exact identity); overwritten",
    notes=("output side and AFTER the bias: W_eff = R W, b_eff = R b",
           "road_1: one (alpha, theta) per pair, index group*g/2 + j, used at both positions j and j+g/2",
           "road_4: per group [g cos-column values, g sin-column values] for theta and alpha alike"),
    make_config=_make_road,
    peft_exports=("RoadConfig",),
    since="0.18.0",
    subject_config=lambda cfg, targets, conv1d, make: make(
        "RoadConfig", variant=str(cfg.get("road_variant", "road_1")), group_size=int(cfg.get("group_size", 64)),
        init_weights=True, **targets),
    subject_defaults=lambda defaults: {"road_variant": defaults("RoadConfig")["variant"],
                                       "group_size": defaults("RoadConfig")["group_size"]},
)
