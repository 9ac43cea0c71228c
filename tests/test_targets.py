"""Target selection: roles, name regexes, excludes and layer indices, on the tiny zoo."""
from __future__ import annotations

import pytest

import variants
from conftest import fresh

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def qwen_name(layer: int, leaf: str) -> str:
    return f"model.layers.{layer}.{'self_attn' if leaf in ATTN else 'mlp'}.{leaf}"


def adapted(model, **fields) -> list[str]:
    """Names attach really adapts (carry adapter tensors and a hook), after checking select_targets agrees."""
    cfg = variants.config("lora", r=4, **fields)
    selected = list(variants.select_targets(model, cfg, variants.REGISTRY["lora"].default_roles))
    variants.attach(model, cfg)
    carrying = [n for n, m in model.named_modules() if any(k.startswith("adapter_") for k, _ in m.named_parameters(recurse=False))]
    hooked = [n for n, m in model.named_modules() if m._forward_hooks]
    assert carrying == selected == list(variants.state_of(model).targets)
    assert hooked == selected
    variants.detach(model)
    return selected


@pytest.fixture
def qwen3():
    return fresh("qwen3")


def test_role_and_layer(qwen3):
    assert adapted(qwen3, target_roles=("q",), layers=(1,)) == ["model.layers.1.self_attn.q_proj"]


def test_default_roles_are_all_projections_not_lm_head(qwen3):
    expected = [qwen_name(i, leaf) for i in (0, 1) for leaf in ATTN + MLP]
    assert sorted(adapted(qwen3)) == sorted(expected)
    assert "lm_head" not in adapted(qwen3)


@pytest.mark.parametrize("roles,leaves", [(("q", "v"), ("q_proj", "v_proj")), (("o",), ("o_proj",)),
                                          (("gate", "up", "down"), MLP), (("k",), ("k_proj",))])
def test_roles(qwen3, roles, leaves):
    assert sorted(adapted(qwen3, target_roles=roles)) == sorted(qwen_name(i, l) for i in (0, 1) for l in leaves)


def test_layers_filter(qwen3):
    got = adapted(qwen3, layers=(0,))
    assert sorted(got) == sorted(qwen_name(0, l) for l in ATTN + MLP)


def test_target_names_regex_disables_default_roles(qwen3):
    # a name filter alone: no role filter, so lm_head can be targeted by name
    assert adapted(qwen3, target_names=(r"^lm_head$",)) == ["lm_head"]
    got = adapted(qwen3, target_names=(r"layers\.0\.",))
    assert sorted(got) == sorted(qwen_name(0, l) for l in ATTN + MLP)
    got = adapted(qwen3, target_names=(r"mlp\.(up|down)_proj$",))
    assert sorted(got) == sorted(qwen_name(i, l) for i in (0, 1) for l in ("up_proj", "down_proj"))


def test_target_names_lone_string_is_one_pattern(qwen3):
    cfg = variants.config("lora", target_names="k_proj")
    assert cfg.target_names == ("k_proj",)
    assert sorted(adapted(qwen3, target_names="k_proj")) == [qwen_name(0, "k_proj"), qwen_name(1, "k_proj")]


def test_target_names_and_roles_both_apply(qwen3):
    assert adapted(qwen3, target_names=(r"self_attn",), target_roles=("v", "gate")) == \
        [qwen_name(0, "v_proj"), qwen_name(1, "v_proj")]


def test_exclude_names(qwen3):
    got = adapted(qwen3, exclude_names=(r"\.mlp\.",))
    assert sorted(got) == sorted(qwen_name(i, l) for i in (0, 1) for l in ATTN)
    got = adapted(qwen3, exclude_names=(r"layers\.0\.self_attn\.q_proj$", r"down_proj"))
    assert qwen_name(0, "q_proj") not in got and qwen_name(1, "q_proj") in got
    assert not [n for n in got if n.endswith("down_proj")]
    assert len(got) == 14 - 1 - 2
    # exclude wins over an explicit name match
    with pytest.raises(ValueError, match="no target matched"):
        variants.attach(qwen3, variants.config("lora", target_names=("lm_head",), exclude_names=("head",)))


def test_selection_is_in_model_order(qwen3):
    got = adapted(qwen3, target_roles=("down", "q"))
    assert got == [qwen_name(0, "q_proj"), qwen_name(0, "down_proj"), qwen_name(1, "q_proj"), qwen_name(1, "down_proj")]


def test_mlp_zoo_roles():
    mlp = fresh("mlp")
    assert adapted(mlp) == ["layers.0.up_proj", "layers.0.down_proj", "layers.1.up_proj", "layers.1.down_proj"]
    assert adapted(mlp, target_roles=("up",)) == ["layers.0.up_proj", "layers.1.up_proj"]
    assert adapted(mlp, target_roles=("down",), layers=(1,)) == ["layers.1.down_proj"]
    assert adapted(mlp, target_names=("head",)) == ["head"]
    with pytest.raises(ValueError, match=r"no target matched.*layers\.0\.up_proj.*head"):
        variants.attach(mlp, variants.config("lora", target_roles=("q",)))


def test_mlp_zoo_adapter_shapes_follow_non_square_layers():
    mlp = fresh("mlp")
    variants.attach(mlp, variants.config("lora", r=4, target_roles=("up", "down")))
    p = variants.named_adapter_parameters(mlp)  # keyed as in the state dict
    assert p["layers.0.up_proj.adapter_A"].shape == (4, 48) and p["layers.0.up_proj.adapter_B"].shape == (80, 4)
    assert p["layers.0.down_proj.adapter_A"].shape == (4, 80) and p["layers.0.down_proj.adapter_B"].shape == (48, 4)
    assert set(p) <= set(mlp.state_dict())


def test_role_of():
    assert variants.role_of("model.layers.3.mlp.down_proj") == "down"
    assert variants.role_of("model.layers.0.self_attn.q_proj") == "q"
    assert variants.role_of("h.0.mlp.fc1") == "up"
    assert variants.role_of("lm_head") is None
    assert variants.role_of("model.layers.0.self_attn.q_norm") is None


def test_variant_default_roles_differ(qwen3):
    cfg = variants.config("ia3")
    got = variants.select_targets(qwen3, cfg, variants.REGISTRY["ia3"].default_roles)
    assert sorted(got) == sorted(qwen_name(i, l) for i in (0, 1) for l in ("k_proj", "v_proj"))
    # an explicit role list overrides the variant's default
    cfg = variants.config("ia3", target_roles=("q",))
    got = variants.select_targets(qwen3, cfg, variants.REGISTRY["ia3"].default_roles)
    assert sorted(got) == [qwen_name(0, "q_proj"), qwen_name(1, "q_proj")]


def test_layer_index_is_first_integer_in_name():
    from variants._targets import layer_index
    assert layer_index("model.layers.12.mlp.up_proj") == 12
    assert layer_index("layers.0.up_proj") == 0
    assert layer_index("lm_head") is None
    assert layer_index("blocks.3.attn.heads.5.q_proj") == 3
    assert layer_index("model.layer3.q_proj") is None  # only a whole dotted component counts


@pytest.mark.parametrize("name,roles", [
    ("encoder.layer.3.attention.self.query", ("q",)),
    ("encoder.layer.3.attention.output.dense", ("o",)),
    ("encoder.layer.3.intermediate.dense", ("up",)),
    ("encoder.layer.3.output.dense", ("down",)),
    ("pooler.dense", ()),  # BERT's pooler and a classifier's dense head have no projection role
    ("classifier.dense", ()),
    ("transformer.layer.0.attention.q_lin", ("q",)),  # DistilBERT
    ("transformer.layer.0.ffn.lin2", ("down",)),
])
def test_encoder_projection_roles(name, roles):
    """BERT-family encoders name the attention output, MLP up and MLP down projections all "dense": the
    path above the leaf tells them apart."""
    from variants._targets import roles_of
    assert roles_of(name) == roles


@pytest.mark.parametrize("fields", [{"target_roles": ("o",)}, {"target_names": ("q_proj", "up")},
                                    {"exclude_names": ("k_proj",)}])
def test_placement_judges_the_targets_the_config_asks_for(fields):
    """A narrowed config (only o_proj, a name, one layer) is judged against what it asks for, not the card's
    placement: no 'missing targets'; adapting more than it asks for still fails."""
    from dataclasses import replace as dc_replace

    from audit import models
    from audit.cards import get
    from audit.cell import Cell
    from audit.roles import resolve_targets
    from audit.checks import placement
    from audit.subjects.ours import Ours

    def placed(card, subject):
        cell = Cell(card, subject, "qwen3", "float32")
        cell.check = "placement"
        placement.run(cell)
        return {r.metric: r for r in cell.rows}

    plain = get("lora")
    card = dc_replace(plain, config={**plain.config, **fields})
    rows = placed(card, Ours())
    assert rows["missing_targets"].status == rows["unexpected_targets"].status == "pass", rows
    assert "expected per the config (" in rows["missing_targets"].message

    class Overreaching(Ours):  # adapts every projection whatever the config asks for
        def attach(self, model, method, cfg, calibration, targets=None):
            return super().attach(model, method, {k: v for k, v in cfg.items() if k not in fields}, calibration)
    base = models.build("qwen3")
    everything, adapted = len(resolve_targets(base, {})), len(resolve_targets(base, fields))
    over = placed(card, Overreaching())["unexpected_targets"]
    assert over.status == "fail" and over.value == everything - adapted > 0, over
