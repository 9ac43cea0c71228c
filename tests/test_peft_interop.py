"""peft adapter folders both ways: ``variants.save_peft`` writes what ``PeftModel.from_pretrained`` loads with our
outputs, ``variants.load_peft`` loads what peft saved with peft's outputs, and ours -> peft -> ours gives back the
same adapter bit for bit. Everything peft cannot represent is refused before anything is written or attached.

Tolerances (relative Frobenius error of the logits, float32 models):
- LOGITS_TOL = 2^-17 (64 u, u = 2^-24): one function evaluated by two implementations that order the same
  float32 operations differently (peft adds the low-rank term after the base output, rotates blocks by einsum,
  ...). Each logit is off by a few u times the network's amplification; measured <= 6e-7 on these models.
- BF16_TOL = 2^-6 (4 u_bf16) for a bfloat16 base with float32 adapters: peft casts its float32 delta to bf16
  and adds it to the bf16 base output (two roundings), ours adds in float32 and rounds once, so the layer
  outputs differ by up to ~2 u_bf16 and the logits by about as much; measured <= 8.1e-3 = 2.1 u_bf16.
- W_res of PiSSA: peft rebuilds W_res = W - U_r S_r V_r^T with a float32 SVD (ours runs in float64). The rank-r
  part of an SVD computed with backward error ~u*sigma_1 moves by ~u*sigma_1/(sigma_r - sigma_{r+1}) (Davis-Kahan);
  measured 0.2-1.1 times that on the zoo; bound 8 times it. OLoRA's W_res = W - Q_r R_r (Householder QR, backward
  stable): bound 8 u * kappa of W's first r columns. After the W_res comparison, peft's W_res is copied over ours
  (or ours over peft's) and the logits compared with LOGITS_TOL: what is left is the adapter's own arithmetic.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch

import variants
from audit import models
from conftest import CASE_NAMES, attach, fresh, variant_of
from variants._layers import dense_weight

peft = pytest.importorskip("peft", reason="peft is a test dependency (noxfile installs it)")
from peft import PeftModel  # noqa: E402

U = 2.0 ** -24
LOGITS_TOL = 2.0 ** -17
BF16_TOL = 2.0 ** -6
REINIT = {"pissa", "olora"}  # peft (and load_peft) rebuild W_res from the base when loading these


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm())


def perturb(params, seed: int = 1) -> None:
    """Move every trainable tensor off its init, so that no adapter is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


def w_res_bound(variant: str, w: torch.Tensor, r: int) -> float:
    """How far peft's float32 re-init may move W_res, relative to ‖W‖ (module docstring)."""
    w = w.double()
    if variant == "pissa":
        sv = torch.linalg.svdvals(w)
        return 8 * U * float(sv[0] / (sv[r - 1] - sv[r]) * sv[0] / w.norm())
    sv = torch.linalg.svdvals(w[:, :r])
    return 8 * U * float(sv[0] / sv[-1])


def peft_layers(pm) -> dict:
    return dict(pm.base_model.model.named_modules())


def align_w_res(ours, pm, variant: str, *, into_ours: bool) -> None:
    """Check that peft's rebuilt W_res is ours up to its float32 init (bound above), then copy one over the other."""
    st = variants.state_of(ours)
    layers = peft_layers(pm)
    for name, mod in st.targets.items():
        theirs = dense_weight(layers[name].get_base_layer())
        w = st.original_weight(name)
        err = rel(theirs, dense_weight(mod)) * float(dense_weight(mod).double().norm() / w.double().norm())
        assert err <= w_res_bound(variant, w, mod.adapter_rank), (name, err)
        with torch.no_grad():
            (dense_weight(mod) if into_ours else theirs).copy_(theirs if into_ours else dense_weight(mod))


# ---------------------------------------------------------------------------------------------------------------
# ours -> peft -> ours, every case of the test configs peft can represent
# ---------------------------------------------------------------------------------------------------------------
# boft (m = 2): peft builds one butterfly component without its CUDA kernel (tests/test_boft.py); boft_m1 runs
WRITABLE = [c for c in CASE_NAMES if variant_of(c) not in ("antipasto", "corda", "loraga") and c not in ("delora", "boft")]
CONV1D_OK = ("lora", "lora+rslora", "pissa", "dora", "eva", "ia3", "ia3_ff", "vera", "adalora", "hira", "fourierft",
             "vblora", "randlora")
OVER = {"adalora": {"total_step": 100}}  # peft requires the schedule's length


EXTRA = [("qwen3", "lokr", {"r": 4, "alpha": 8.0}),  # full w1, w2 on q/k/v/o: peft needs alpha_l = r there
         ("qwen3", "adalora", {"total_step": 100, "alpha": 3.0})]


@pytest.mark.parametrize("arch,case,over", [("qwen3", c, OVER.get(c, {})) for c in WRITABLE]
                         + [("qwen2", c, OVER.get(c, {})) for c in WRITABLE]
                         + [("gpt2", c, OVER.get(c, {})) for c in CONV1D_OK] + EXTRA)
def test_ours_to_peft_and_back(arch, case, over, tmp_path):
    base = fresh(arch)
    ours = attach(fresh(arch), case, **over)
    perturb(variants.adapter_parameters(ours))
    ids = models.example_inputs(base)
    want = models.logits(ours, ids)
    variants.save_peft(ours, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    pm = PeftModel.from_pretrained(models.clone(base), tmp_path).eval()
    v = variant_of(case)
    if v in REINIT:
        align_w_res(ours, pm, v, into_ours=False)
    assert rel(models.logits(pm, ids), want) <= LOGITS_TOL

    back = variants.load_peft(models.clone(base), tmp_path)
    st, st0 = variants.state_of(back), variants.state_of(ours)
    assert st.variant.name == v and sorted(st.targets) == sorted(st0.targets)
    for name, mod in st0.targets.items():
        got = variants.adapter_tensors(st.targets[name])
        for t, x in variants.adapter_tensors(mod).items():
            assert torch.equal(got[t], x), (name, t)
    assert torch.equal(models.logits(back, ids), want)


@pytest.mark.parametrize("case", ["lora", "dora", "pissa", "eva", "ia3", "hra", "delora_peft", "road", "oft", "lokr",
                                  "loha", "vera", "olora", "miss", "miss_bat", "hira", "fourierft", "c3a", "boft_m1", "shira", "vblora",
                                  "randlora"])
def test_bf16_base_round_trip(case, tmp_path):
    """A bfloat16 base with float32 adapters (both libraries' default): peft loads our folder with our outputs up to
    its extra bf16 rounding, and ours -> peft -> ours is exact."""
    base = fresh("qwen3", torch.bfloat16)
    ours = attach(fresh("qwen3", torch.bfloat16), case)
    perturb(variants.adapter_parameters(ours))
    ids = models.example_inputs(base)
    want = models.logits(ours, ids)
    variants.save_peft(ours, tmp_path)
    assert rel(models.logits(PeftModel.from_pretrained(models.clone(base), tmp_path).eval(), ids), want) <= BF16_TOL
    assert torch.equal(models.logits(variants.load_peft(models.clone(base), tmp_path), ids), want)


def test_saved_folder_is_what_peft_itself_saves(tmp_path):
    """Key for key and value for value, our folder equals the one peft writes for the same adapter (the bridge
    copies our state into peft's own layers; peft's save_pretrained writes them)."""
    from safetensors.torch import load_file

    from references.peft_bridge import build_peft_model
    base = fresh("qwen3")
    for case in ("lora", "dora", "ia3_ff", "hra", "delora_peft", "road_4", "oft_neumann", "lokr", "loha", "vera",
                 "adalora", "miss_bat", "hira", "shira", "vblora", "randlora"):
        ours = attach(fresh("qwen3"), case, **OVER.get(case, {}))
        perturb(variants.adapter_parameters(ours))
        st = variants.state_of(ours)
        states = {n: {t: x.detach() for t, x in variants.adapter_tensors(m).items()} for n, m in st.targets.items()}
        pm = build_peft_model(base, st.variant.name, st.cfg.to_dict(), list(st.targets), states,
                              copy_model=models.clone)
        pm.save_pretrained(tmp_path / case / "peft")
        variants.save_peft(ours, tmp_path / case / "ours")
        theirs, mine = (load_file(tmp_path / case / d / "adapter_model.safetensors") for d in ("peft", "ours"))
        assert sorted(theirs) == sorted(mine), case
        for k in theirs:
            assert torch.equal(theirs[k], mine[k]), (case, k)
        mine_cfg, theirs_cfg = (json.loads((tmp_path / case / d / "adapter_config.json").read_text())
                                for d in ("ours", "peft"))
        how_found = {"target_modules", "feedforward_modules", "base_model_name_or_path", "task_type", "auto_mapping",
                     "peft_version"}  # peft's own names its layers by a regex, ours by a list
        differ = {k: (v, theirs_cfg.get(k)) for k, v in mine_cfg.items()
                  if k not in how_found and theirs_cfg.get(k) != v}
        assert not differ, (case, differ)


def test_oft_exact_cayley_is_stored_negated(tmp_path):
    """peft's exact Cayley branch computes R(-Q) (reports/oft.md): our Q is written as -Q so peft computes ours;
    the Neumann branch follows the paper's sign and is written as is."""
    from safetensors.torch import load_file
    for case, sign in (("oft", -1.0), ("oft_neumann", 1.0)):
        ours = attach(fresh("qwen3"), case)
        perturb(variants.adapter_parameters(ours))
        variants.save_peft(ours, tmp_path / case)
        saved = load_file(tmp_path / case / "adapter_model.safetensors")
        for name, mod in variants.state_of(ours).targets.items():
            assert torch.equal(saved[f"base_model.model.{name}.oft_R.weight"], sign * mod.adapter_Q.detach())


# ---------------------------------------------------------------------------------------------------------------
# peft -> ours: adapters made with peft's own configs, as a peft user writes them
# ---------------------------------------------------------------------------------------------------------------
T = ["q_proj", "v_proj", "down_proj"]
PEFT_MADE = {
    "lora": ("lora", lambda: peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=T)),
    "lora_bias": ("lora", lambda: peft.LoraConfig(r=4, lora_alpha=8, lora_bias=True, target_modules=T)),
    "lora_rslora": ("lora", lambda: peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=T)),
    "lora_gaussian": ("lora", lambda: peft.LoraConfig(r=4, lora_alpha=16, init_lora_weights="gaussian",
                                                      target_modules=["k_proj", "o_proj"])),
    "dora": ("dora", lambda: peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=T)),
    "pissa": ("pissa", lambda: peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=T)),
    "olora": ("olora", lambda: peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights="olora", target_modules=T)),
    "eva": ("eva", lambda: peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights="eva", target_modules=T,
                                           rank_pattern={"q_proj": 2, "v_proj": 6},
                                           alpha_pattern={"q_proj": 4, "v_proj": 12})),
    "adalora": ("adalora", lambda: peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, total_step=10,
                                                      target_modules=T)),
    "ia3": ("ia3", lambda: peft.IA3Config(target_modules=["k_proj", "v_proj"], feedforward_modules=[])),
    "ia3_ff": ("ia3_ff", lambda: peft.IA3Config(target_modules=["down_proj"], feedforward_modules=["down_proj"])),
    "hra": ("hra", lambda: peft.HRAConfig(r=4, target_modules=T)),
    "delora": ("delora", lambda: peft.DeloraConfig(r=4, target_modules=T)),
    "road": ("road", lambda: peft.RoadConfig(variant="road_4", group_size=8, target_modules=T)),
    "oft_exact": ("oft", lambda: peft.OFTConfig(oft_block_size=8, r=0, use_cayley_neumann=False, target_modules=T)),
    "oft_neumann": ("oft", lambda: peft.OFTConfig(oft_block_size=8, r=0, target_modules=T)),
    "oft_share": ("oft", lambda: peft.OFTConfig(oft_block_size=8, r=0, block_share=True, target_modules=T)),
    "oft_coft": ("oft", lambda: peft.OFTConfig(oft_block_size=8, r=0, coft=True, eps=0.1, target_modules=T)),
    "oft_by_r": ("oft", lambda: peft.OFTConfig(r=8, oft_block_size=0, target_modules=["q_proj", "o_proj"])),
    "lokr": ("lokr", lambda: peft.LoKrConfig(r=2, alpha=8, decompose_both=True, target_modules=T)),
    "lokr_full": ("lokr", lambda: peft.LoKrConfig(r=4, alpha=4, target_modules=T)),  # q: w1, w2 full; scale 1
    "loha": ("loha", lambda: peft.LoHaConfig(r=4, alpha=8, rank_dropout=0.1, target_modules=T)),
    "vera": ("vera", lambda: peft.VeraConfig(r=4, target_modules=["q_proj", "o_proj"])),
    "miss": ("miss", lambda: peft.MissConfig(r=8, target_modules=T)),
    "miss_random": ("miss", lambda: peft.MissConfig(r=8, init_weights=False, target_modules=T)),  # balance
    "miss_bat": ("miss", lambda: peft.MissConfig(r=8, init_weights="bat", target_modules=T)),
    "miss_mini": ("miss", lambda: peft.MissConfig(r=8, init_weights="mini", mini_r=16, target_modules=T)),
    "hira": ("hira", lambda: peft.HiraConfig(r=4, target_modules=T)),
    "c3a": ("c3a", lambda: peft.C3AConfig(block_size=16, target_modules=T)),
    "fourierft": ("fourierft", lambda: peft.FourierFTConfig(n_frequency=50, scaling=100.0, random_loc_seed=9,
                                                            target_modules=T)),
    "shira": ("shira", lambda: peft.ShiraConfig(r=2, random_seed=3, target_modules=T)),
    "vblora": ("vblora", lambda: peft.VBLoRAConfig(r=4, num_vectors=8, vector_length=16, target_modules=T)),
    "vblora_topk": ("vblora", lambda: peft.VBLoRAConfig(r=4, num_vectors=8, vector_length=16, target_modules=T,
                                                        save_only_topk_weights=True)),
    "randlora": ("randlora", lambda: peft.RandLoraConfig(r=8, randlora_alpha=16, target_modules=["q_proj", "o_proj"])),
}


def peft_folder(tmp_path, make, arch: str = "qwen3"):
    """A peft adapter made by peft on ``fresh(arch)``, moved off its init and saved; returns (folder, peft model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(fresh(arch), make())
    perturb([p for p in pm.parameters() if p.requires_grad])
    pm.eval()
    pm.save_pretrained(tmp_path)
    return tmp_path, pm


@pytest.mark.parametrize("method", sorted(PEFT_MADE))
def test_peft_folder_loads_with_peft_outputs(method, tmp_path):
    v, make = PEFT_MADE[method]
    folder, pm = peft_folder(tmp_path, make)
    ids = models.example_inputs(pm)
    want = models.logits(pm, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loha's rank_dropout: training only (its own test below)
        ours = variants.load_peft(fresh("qwen3"), folder).eval()
    st = variants.state_of(ours)
    assert st.variant.name == v
    assert sorted(st.targets) == sorted(pm.base_model.targeted_module_names)
    if v in REINIT:
        align_w_res(ours, pm, v, into_ours=True)
    assert rel(models.logits(ours, ids), want) <= LOGITS_TOL


def test_lora_dropout_is_loaded_and_training_only_options_warn(tmp_path):
    folder, _ = peft_folder(tmp_path / "lora", PEFT_MADE["lora"][1])
    assert variants.state_of(variants.load_peft(fresh("qwen3"), folder)).cfg.dropout == 0.1
    folder, _ = peft_folder(tmp_path / "loha", PEFT_MADE["loha"][1])
    with pytest.warns(UserWarning, match="rank_dropout=0.1 changes training only"):
        variants.load_peft(fresh("qwen3"), folder)


# ---------------------------------------------------------------------------------------------------------------
# refusals: named, before anything is written or attached
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,over,match", [
    ("antipasto", {}, "peft has no counterpart of variant 'antipasto'"),
    ("delora", {}, "init_style='paper' keeps frozen copies C, D"),
    ("adalora", {}, "requires total_step"),
])
def test_save_peft_refuses_what_peft_cannot_hold(case, over, match, tmp_path):
    ours = attach(fresh("qwen3"), case, **over)
    with pytest.raises(ValueError, match=match):
        variants.save_peft(ours, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_save_peft_refuses_conv1d_where_peft_does(tmp_path):
    for case, match in (("hra", "adapt torch.nn.Linear only"), ("olora", "without transposing it")):
        with pytest.raises(ValueError, match=match):
            variants.save_peft(attach(fresh("gpt2"), case), tmp_path / case)


def test_save_peft_refuses_merged(tmp_path):
    ours = attach(fresh("qwen3"), "lora")
    variants.merge(ours)
    with pytest.raises(RuntimeError, match="unmerge"):
        variants.save_peft(ours, tmp_path)


def _edit_config(folder, **fields):
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(fields)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("method,fields,exc,match", [
    ("lora", {"peft_type": "PROMPT_TUNING"}, ValueError, "peft_type 'PROMPT_TUNING' has no adapter-audit counterpart"),
    ("lora", {"init_lora_weights": "corda"}, ValueError, "corda adapter cannot be loaded from the folder alone"),
    ("pissa", {"init_lora_weights": "pissa_niter_4"}, ValueError, "init_lora_weights='pissa_niter_4'"),
    ("lora", {"modules_to_save": ["lm_head"]}, ValueError, "modules_to_save=\\['lm_head'\\]: variants.load_peft cannot"),
    ("dora", {"lora_bias": True}, ValueError, "lora_bias"),
    ("lora", {"bias": "all"}, ValueError, "bias='all' cannot be loaded"),
    ("lora", {"alpha_pattern": {"v_proj": 32}}, ValueError, "different scalings"),
    ("lora", {"use_dora": True}, KeyError, "lora_magnitude_vector"),
    ("adalora", {"rank_pattern": {"x": [True]}}, ValueError, "rank_pattern="),
    ("oft_exact", {"bias": "all"}, ValueError, "bias='all' cannot be loaded"),
    ("vera", {"save_projection": False}, ValueError, "save_projection=False"),
    ("vblora", {"bias": "all"}, ValueError, "bias='all' cannot be loaded"),
    ("randlora", {"save_projection": False}, ValueError, "save_projection=False"),
    ("ia3", {"feedforward_modules": ["k_proj"]}, ValueError, "no adapter-audit variant is this IA3 adapter"),
    ("lokr_full", {"alpha": 8}, ValueError, "peft scales kron\\(w1, w2\\) by alpha/r"),
    ("lokr", {"rank_pattern": {"q_proj": 8}}, ValueError, "rank_pattern="),
])
def test_load_peft_refuses_what_it_cannot_reproduce(method, fields, exc, match, tmp_path):
    folder, _ = peft_folder(tmp_path, PEFT_MADE[method][1])
    _edit_config(folder, **fields)
    model = fresh("qwen3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=match):
        variants.load_peft(model, folder)
    assert not hasattr(model, "_adapter_audit_state")
    after = model.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_load_peft_refuses_bad_files(tmp_path):
    from safetensors.torch import load_file, save_file
    folder, _ = peft_folder(tmp_path / "a", PEFT_MADE["lora"][1])
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)

    def refused(exc, match, model=None):
        model = fresh("qwen3") if model is None else model
        with pytest.raises(exc, match=match):
            variants.load_peft(model, folder)
        assert not hasattr(model, "_adapter_audit_state")

    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors = {k: v.clone() for k, v in tensors.items()}  # no shared storage (safetensors refuses it)
    save_file({**tensors, key: torch.full_like(tensors[key], float("nan"))}, weights)
    refused(ValueError, "non-finite")
    save_file({**tensors, key: tensors[key][:, :2].contiguous()}, weights)
    refused(ValueError, "tensor shapes do not match")
    save_file({**tensors, "base_model.model.model.layers.9.mlp.down_proj.lora_A.weight": tensors[key].clone()}, weights)
    refused(KeyError, "modules this model lacks")
    save_file({**tensors, key: tensors[key].to(torch.bfloat16)}, weights)
    refused(ValueError, "several dtypes")
    weights.unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    refused(FileNotFoundError, "is a pickle, which is never loaded")
    (folder / "adapter_config.json").write_text("{not json")
    refused(ValueError, "not valid JSON")
    (folder / "adapter_config.json").write_text("{}")
    refused(ValueError, "no 'peft_type'")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        variants.load_peft(fresh("qwen3"), tmp_path / "nowhere")
    with pytest.raises(RuntimeError, match="already attached"):
        variants.load_peft(attach(fresh("qwen3"), "lora"), folder)


def test_load_peft_refuses_another_releases_layout_naming_it(tmp_path):
    """peft < 0.16 stored OFT as oft_r / oft_s (measured with peft 0.15.2): not the layout read here."""
    from safetensors.torch import save_file
    name = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{name}.oft_r": torch.zeros(8, 8, 8), f"{name}.oft_s": torch.ones(64, 1)},
              tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "OFT", "r": 8, "target_modules": ["q_proj"]}))
    model = fresh("qwen3")
    with pytest.raises(ValueError, match=r"keys ending in \['oft_R.weight'\].*peft_version: not recorded"):
        variants.load_peft(model, tmp_path)
    assert not hasattr(model, "_adapter_audit_state")


def test_variants_load_points_a_peft_folder_to_load_peft(tmp_path):
    folder, _ = peft_folder(tmp_path, PEFT_MADE["lora"][1])
    with pytest.raises(IsADirectoryError, match="variants.load_peft"):
        variants.load(fresh("qwen3"), folder)
    with pytest.raises(ValueError, match="load the folder with variants.load_peft"):
        variants.load(fresh("qwen3"), folder / "adapter_model.safetensors")


def test_every_method_the_bridge_maps_has_a_peft_format_naming_the_same_tensors():
    """variants/ may not import references/, so each variant declares peft's saved names itself; they must be the
    bridge's tensor paths without peft's adapter name (peft's save_pretrained drops '.default'; DoRA's magnitude
    is saved under its module name)."""
    from references.peft_bridge import MAPPINGS
    for name, mapping in MAPPINGS.items():
        fmt = variants.REGISTRY[name].peft_format
        assert fmt is not None, name
        bridge = {t.canonical: t.peft.replace(".default", "") for t in mapping.tensors if t.kind != "base weight"}
        bridge = {k: v.removesuffix(".weight") if v.startswith("lora_magnitude_vector") else v
                  for k, v in bridge.items()}
        assert dict(fmt.tensors) == bridge, name
    assert {n for n, v in variants.REGISTRY.items() if v.peft_format is not None} == set(MAPPINGS)
