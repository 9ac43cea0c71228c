"""Bad inputs raise the right exception type with a message naming the problem, and leave the model as it was."""
from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import variants
from conftest import all_adapter_tensors, calibration_batches, fresh

VARIANTS_DIR = Path(variants.__file__).resolve().parent


def snapshot(model: nn.Module) -> dict:
    """Everything attach may touch: tensors (bit-exact), requires_grad, hooks, adapter attributes."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()},
        "attrs": sorted(f"{n}.{a}" for n, m in model.named_modules() for a in vars(m) if a.startswith("adapter_")),
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for k in before["state"]:
        assert torch.equal(after["state"][k], before["state"][k]), f"{k} changed"
    assert not [k for k in after["state"] if "adapter_" in k]
    assert not [n for n, _ in model.named_parameters() if "adapter_" in n]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    assert after["attrs"] == [] and before["attrs"] == []
    assert not hasattr(model, "_adapter_audit_state")


@pytest.fixture
def qwen3():
    return fresh("qwen3")


# -- config --------------------------------------------------------------------------------------------
def test_unknown_variant_lists_known():
    with pytest.raises(ValueError, match=r"unknown variant 'loraa'.*'lora'.*'pissa'"):
        variants.config("loraa", r=4)


def test_unknown_field_names_allowed_fields():
    with pytest.raises(TypeError, match=r"unknown field\(s\) \['rank'\].*allowed fields.*'r'.*'alpha'"):
        variants.config("lora", rank=4)


@pytest.mark.parametrize("field,value", [("r", "4"), ("r", 4.0), ("r", True), ("alpha", "8"),
                                         ("use_rslora", 1), ("target_roles", 3)])
def test_wrong_type(field, value):
    with pytest.raises(TypeError, match=rf"LoraConfig\.{field}: got {value!r}"):
        variants.config("lora", **{field: value})


@pytest.mark.parametrize("r", [0, -3])
def test_nonpositive_r(r):
    with pytest.raises(ValueError, match=rf"\.r: must be a positive integer, got {r}"):
        variants.config("lora", r=r)


def test_unknown_role_and_bad_regex_and_bad_dtype():
    with pytest.raises(ValueError, match=r"target_roles: unknown role\(s\) \['qq'\]"):
        variants.config("lora", target_roles=("qq",))
    with pytest.raises(ValueError, match=r"target_names: invalid regex '\('"):
        variants.config("lora", target_names=("(",))
    with pytest.raises(ValueError, match=r"dtype: got 'float8'; allowed: a torch.dtype or a name among"):
        variants.config("lora", dtype="float8")
    with pytest.raises(ValueError, match=r"layers: indices must be >= 0"):
        variants.config("lora", layers=(-1,))


def test_hra_odd_r():
    with pytest.raises(ValueError, match=r"HraConfig\.r: must be even.*got 3"):
        variants.config("hra", r=3)


def test_antipasto_r_not_divisible_by_block_size():
    with pytest.raises(ValueError, match=r"AntipastoConfig\.r: r=6 must be divisible by block_size=4"):
        variants.config("antipasto", r=6, block_size=4)


def test_road_group_size_odd():
    with pytest.raises(ValueError, match=r"RoadConfig\.group_size: must be a positive even integer, got 7"):
        variants.config("road", group_size=7)


def test_bad_literal_names_allowed():
    with pytest.raises(ValueError, match=r"road_variant: got 'road_3'.*'road_1', 'road_2', 'road_4'"):
        variants.config("road", road_variant="road_3")
    with pytest.raises(ValueError, match=r"init_style: got 'kaiming'.*'paper', 'peft'"):
        variants.config("delora", init_style="kaiming")


def test_attach_rejects_non_config(qwen3):
    with pytest.raises(TypeError, match="cfg must be an adapter config"):
        variants.attach(qwen3, {"variant": "lora", "r": 4})


# -- layer-dependent checks (raised by attach, before any tensor) --------------------------------------
@pytest.mark.parametrize("name,r,module", [
    ("pissa", 40, "model.layers.0.self_attn.k_proj"),      # k_proj is 64 -> 32
    ("antipasto", 40, "model.layers.0.self_attn.k_proj"),
    ("delora", 40, "model.layers.0.self_attn.k_proj"),
    ("eva", 80, "model.layers.0.self_attn.q_proj"),        # EVA is bounded by d_in = 64
])
def test_rank_too_large_for_layer(qwen3, name, r, module):
    before = snapshot(qwen3)
    with pytest.raises(ValueError, match=rf"r={r} exceeds .*{re.escape(repr(module))}"):
        variants.attach(qwen3, variants.config(name, r=r), calibration_data=calibration_batches(qwen3))
    assert_untouched(qwen3, before)


def test_road_group_size_not_dividing_d_out_names_module(qwen3):
    before = snapshot(qwen3)
    with pytest.raises(ValueError, match=r"group_size: 12 does not divide d_out=64 of module "
                                         r"'model\.layers\.0\.self_attn\.q_proj'"):
        variants.attach(qwen3, variants.config("road", group_size=12))
    assert_untouched(qwen3, before)


def test_no_target_matched_lists_modules(qwen3):
    before = snapshot(qwen3)
    with pytest.raises(ValueError, match=r"no target matched.*Adaptable layers \(nn.Linear or Conv1D\) in this model: "
                                         r"model\.layers\.0\.self_attn\.q_proj"):
        variants.attach(qwen3, variants.config("lora", r=4, target_names=("nonexistent",)))
    with pytest.raises(ValueError, match=r"no target matched.*layers=\(7,\)"):
        variants.attach(qwen3, variants.config("lora", r=4, layers=(7,)))
    assert_untouched(qwen3, before)


def test_attach_twice(qwen3):
    variants.attach(qwen3, variants.config("lora", r=4))
    tensors = {k: v.clone() for k, v in all_adapter_tensors(qwen3).items()}
    with pytest.raises(RuntimeError, match=r"already attached.*detach"):
        variants.attach(qwen3, variants.config("lora", r=4, seed=1))
    with pytest.raises(RuntimeError, match=r"already attached"):
        variants.attach(qwen3, variants.config("dora", r=4))
    # the first adapter is intact
    after = all_adapter_tensors(qwen3)
    assert after.keys() == tensors.keys()
    assert all(torch.equal(after[k], tensors[k]) for k in tensors)


class LinearLike(nn.Module):
    """Has in_features/out_features and a 2-D weight, but is not an nn.Linear."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.in_features, self.out_features = d_in, d_out
        self.weight = nn.Parameter(torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x @ self.weight.t()


class LikeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = LinearLike(16, 12)
        self.v_proj = nn.Linear(12, 16)

    def forward(self, x):
        return self.v_proj(self.q_proj(x))


@pytest.mark.parametrize("name", ["pissa", "dora", "delora", "antipasto"])
def test_dense_variant_rejects_linear_like(name):
    model = LikeModel()
    before = snapshot(model)
    with pytest.raises(TypeError, match=rf"'{name}'.*needs nn\.Linear.*'q_proj' is LinearLike"):
        variants.attach(model, variants.config(name, r=4, target_roles=("q", "v")))
    assert_untouched(model, before)


def test_lora_accepts_linear_like():
    model = LikeModel()
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    y0 = model(x)
    variants.attach(model, variants.config("lora", r=4, target_roles=("q",)))
    assert torch.equal(model(x), y0)
    assert hasattr(model.q_proj, "adapter_A")


def test_conv1d_is_adapted_and_fused_layers_named_when_nothing_matches():
    from transformers.pytorch_utils import Conv1D

    class GPTish(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = Conv1D(24, 8)
            self.q_proj = nn.Linear(8, 8)

    model = GPTish()
    variants.attach(model, variants.config("lora", r=2, target_names=("c_attn",)))
    assert list(variants.state_of(model).targets) == ["c_attn"]
    assert tuple(model.c_attn.adapter_A.shape) == (2, 8) and tuple(model.c_attn.adapter_B.shape) == (24, 2)
    variants.detach(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"no target matched.*c_attn \(Conv1D, fused q/k/v\)"):
        variants.attach(model, variants.config("lora", r=2, target_roles=("o",)))
    assert_untouched(model, before)


# -- calibration ---------------------------------------------------------------------------------------
def test_eva_without_calibration_data(qwen3):
    before = snapshot(qwen3)
    with pytest.raises(ValueError, match=r"'eva' needs calibration_data"):
        variants.attach(qwen3, variants.config("eva", r=4))
    assert_untouched(qwen3, before)


@pytest.mark.parametrize("name", ["eva", "antipasto"])
def test_empty_calibration_data_and_rollback(qwen3, name):
    qwen3.model.embed_tokens.weight.requires_grad_(False)  # a mixed requires_grad state must come back
    before = snapshot(qwen3)
    with pytest.raises(ValueError, match=r"calibration_data is empty"):
        variants.attach(qwen3, variants.config(name, r=4), calibration_data=[])
    assert_untouched(qwen3, before)  # antipasto had already overwritten W with W_res: restored


def test_eva_too_few_calibration_tokens(qwen3):
    before = snapshot(qwen3)
    one_token = [torch.zeros(1, 1, dtype=torch.long)]
    with pytest.raises(ValueError, match=r"EVA: module '.*' saw 1 calibration tokens"):
        variants.attach(qwen3, variants.config("eva", r=4), calibration_data=one_token)
    assert_untouched(qwen3, before)


def test_bad_calibration_item(qwen3):
    before = snapshot(qwen3)
    with pytest.raises(TypeError, match=r"calibration_data items must be tensors.*got str"):
        variants.attach(qwen3, variants.config("eva", r=4), calibration_data=["hello"])
    assert_untouched(qwen3, before)


# -- load ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_q_checkpoint(tmp_path_factory):
    model = fresh("qwen3")
    variants.attach(model, variants.config("lora", r=4, target_roles=("q",)))
    path = tmp_path_factory.mktemp("ckpt") / "lora_q.safetensors"
    variants.save(model, path)
    return path


def test_load_mismatched_keys(qwen3, lora_q_checkpoint):
    variants.attach(qwen3, variants.config("lora", r=4, target_roles=("v",)))
    with pytest.raises(KeyError, match=r"checkpoint keys do not match.*missing.*v_proj.*unexpected.*q_proj"):
        variants.load(qwen3, lora_q_checkpoint)
    assert "model.layers.0.self_attn.v_proj" in variants.state_of(qwen3).targets  # still attached


def test_load_mismatched_keys_into_bare_model_rolls_back(lora_q_checkpoint):
    model = fresh("mlp")  # the checkpoint's config matches no module of the mlp
    before = snapshot(model)
    with pytest.raises(ValueError, match="no target matched"):
        variants.load(model, lora_q_checkpoint)
    assert_untouched(model, before)

    llama = fresh("llama")  # another architecture with the same module names and shapes: loads
    variants.load(llama, lora_q_checkpoint)
    assert set(variants.state_of(llama).targets) == {f"model.layers.{i}.self_attn.q_proj" for i in (0, 1)}


def test_load_bare_model_with_more_targets_rolls_back(tmp_path):
    src = fresh("qwen3")
    variants.attach(src, variants.config("pissa", r=4, target_roles=("q",), layers=(0,)))
    path = tmp_path / "p.safetensors"
    variants.save(src, path)
    # drop the layers filter from the stored config so the bare model selects more modules than saved
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["config"] = meta["config"].replace('"layers": [0]', '"layers": null')
    save_file(tensors, str(path), metadata=meta)
    model = fresh("qwen3")
    before = snapshot(model)
    with pytest.raises(KeyError, match=r"missing.*layers\.1\.self_attn\.q_proj"):
        variants.load(model, path)
    assert_untouched(model, before)


def test_load_mismatched_shapes(qwen3, lora_q_checkpoint):
    variants.attach(qwen3, variants.config("lora", r=8, target_roles=("q",)))
    a = {k: v.clone() for k, v in all_adapter_tensors(qwen3).items()}
    with pytest.raises(ValueError, match=r"tensor shapes do not match.*adapter_A: file \(4, 64\) vs model \(8, 64\)"):
        variants.load(qwen3, lora_q_checkpoint)
    b = all_adapter_tensors(qwen3)
    assert all(torch.equal(a[k], b[k]) for k in a)  # nothing half-loaded


def test_load_mismatched_variant(qwen3, lora_q_checkpoint):
    variants.attach(qwen3, variants.config("dora", r=4, target_roles=("q",)))
    with pytest.raises(ValueError, match=r"model carries variant 'dora', checkpoint holds 'lora'"):
        variants.load(qwen3, lora_q_checkpoint)
    with pytest.raises(ValueError, match=r"checkpoint holds variant 'lora', not 'dora'"):
        variants.load(fresh("qwen3"), lora_q_checkpoint, variant=variants.REGISTRY["dora"])


def test_load_foreign_safetensors(qwen3, tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64)}, str(path))
    before = snapshot(qwen3)
    with pytest.raises(ValueError, match=r"not an adapter-audit checkpoint"):
        variants.load(qwen3, path)
    assert_untouched(qwen3, before)
    path2 = tmp_path / "foreign_meta.safetensors"
    save_file({"x": torch.zeros(2)}, str(path2), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"not an adapter-audit checkpoint \(metadata format='pt'\)"):
        variants.load(qwen3, path2)


# -- no unpickling -------------------------------------------------------------------------------------
_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _code_uses_unpickling(source: str) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            hits += [a.name for a in node.names if a.name.split(".")[0] in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _FORBIDDEN_MODULES:
            hits.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr in ("load", "loads") and \
                isinstance(node.value, ast.Name) and node.value.id in {"torch", *_FORBIDDEN_MODULES}:
            hits.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in _FORBIDDEN_MODULES:
            hits.append(node.id)
    return hits


def test_checkpoint_code_never_unpickles():
    src = (VARIANTS_DIR / "_io.py").read_text()
    assert _code_uses_unpickling(src) == []
    assert "torch.load" not in src and "import pickle" not in src
    # and nowhere else in the package
    for f in VARIANTS_DIR.glob("*.py"):
        assert _code_uses_unpickling(f.read_text()) == [], f.name
    # the checker itself catches what it should
    assert _code_uses_unpickling("import torch\nsd = torch.load(p)") == ["torch.load"]
    assert _code_uses_unpickling("from pickle import loads") == ["pickle"]


class _Boom:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.mkdir, (Path(self.marker),))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_file_raises_without_executing(qwen3, tmp_path, how):
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "adapter.pt"
    payload = {"model.layers.0.self_attn.q_proj.adapter_A": _Boom(str(marker))}
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    assert not marker.exists()
    before = snapshot(qwen3)
    with pytest.raises(Exception) as exc:
        variants.load(qwen3, path)
    assert not isinstance(exc.value, (AttributeError, NameError))  # a real refusal, not a crash in our code
    assert not marker.exists(), "loading the .pt file executed its pickle payload"
    assert_untouched(qwen3, before)
    with pytest.raises(Exception):
        variants.read_config(path)
    assert not marker.exists()
    # the payload was live: an unpickling loader would have run it
    if how == "pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()
