"""What a torch or peft user tries on the first day (issue 15's "What was measured"), each with the new
behaviour: configs that take what a torch user writes, parameters an optimiser takes, a model that
pickles and shows its adapter, merge/unmerge, enable/disable, dropout."""
from __future__ import annotations

import io

import pytest
import torch

import variants
from audit import models
from audit.state import perturb


def _model(name="qwen2"):
    m = models.build(name)
    return m, models.example_inputs(m)


# -- configs ---------------------------------------------------------------------------------------
def test_config_takes_a_torch_dtype_or_its_name_and_lists_the_allowed_ones():
    assert variants.config("lora", dtype=torch.bfloat16).dtype == "bfloat16"
    assert variants.config("lora", dtype="torch.float16").dtype == "float16"
    with pytest.raises(ValueError, match=r"dtype: got 'int8'; allowed: a torch.dtype or a name among \('float32'"):
        variants.config("lora", dtype=torch.int8)


def test_config_takes_a_lone_value_or_any_iterable_where_a_tuple_is_expected():
    assert variants.config("lora", target_roles="q").target_roles == ("q",)
    assert variants.config("lora", target_names="q_proj").target_names == ("q_proj",)
    assert variants.config("lora", layers=range(2)).layers == (0, 1)
    assert variants.config("lora", layers=3).layers == (3,)
    assert variants.config("lora", target_roles=["q", "v"]).target_roles == ("q", "v")
    with pytest.raises(TypeError, match=r"layers: got 'x'; expected a tuple of int \(any iterable, or one int\)"):
        variants.config("lora", layers="x")


@pytest.mark.parametrize("name,field", [("ia3", "alpha"), ("ia3_ff", "alpha"), ("hra", "alpha"), ("road", "alpha"),
                                        ("ia3", "r"), ("road", "r"), ("oft", "alpha"), ("vera", "alpha")])
def test_a_field_the_variant_ignores_is_refused_naming_it(name, field):
    with pytest.raises(TypeError, match=rf"{name} does not use {field}.*the fields {name} uses: \["):
        variants.config(name, **{field: 4})
    cls = variants.REGISTRY[name].Config
    with pytest.raises(TypeError, match=rf"{cls.__name__}.{field}: {name} does not use {field}"):
        cls(**{field: 4})  # constructing the class directly: a value other than the default


@pytest.mark.parametrize("name", ["lora", "dora", "pissa", "olora", "adalora", "delora"])
def test_a_rank_above_the_layer_width_is_refused_where_it_is_degenerate(name):
    m, _ = _model("qwen3")  # every projection is at most 64 wide
    extra = {"target_r": 2} if name == "adalora" else {}
    with pytest.raises(ValueError, match=r"\.r: r=1000 exceeds (64|32) \(min\(d_in, d_out\)"):
        variants.attach(m, variants.config(name, r=1000, **extra))
    assert not hasattr(m, "_adapter_audit_state")  # refused before any change


# -- parameters, pickling, repr, summary ------------------------------------------------------------------
def test_adapter_parameters_are_the_trainable_parameters_an_optimiser_takes():
    m, ids = _model()
    variants.attach(m, variants.config("vera", r=8))  # VeRA: frozen shared buffers beside trainable vectors
    params = variants.adapter_parameters(m)
    named = variants.named_adapter_parameters(m)
    assert params and all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params)
    assert set(named) <= set(dict(m.named_parameters())) and all(".adapter_lambda_" in k for k in named)
    assert {id(p) for p in params} == {id(p) for p in m.parameters() if p.requires_grad}
    opt = torch.optim.AdamW(variants.adapter_parameters(m), lr=1e-2)
    models.logits(m, ids).square().mean().backward()
    opt.step()  # runs: the optimiser got parameters, not names


def test_an_adapted_model_pickles_and_shows_its_adapter():
    m, ids = _model()
    variants.attach(m, variants.config("lora", r=4, alpha=8.0))
    perturb(m, 0)
    y = models.logits(m, ids).detach()
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(models.logits(again, ids), y)
    variants.detach(again)  # the copy's hooks and state are its own
    assert not torch.equal(models.logits(again, ids), y) and torch.equal(models.logits(m, ids), y)
    assert "adapter=lora(r=4)" in repr(m.model.layers[0].self_attn.q_proj)
    line = variants.summary(m)
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert line.startswith("lora on 7 layers, rank 4: trainable params ") and f"{trainable:,} of " in line


def test_summary_counts_a_shared_frozen_pair_once():
    """VeRA registers its one (A, B) pair on every layer: the frozen count is that pair's size."""
    m, _ = _model()
    variants.attach(m, variants.config("vera", r=4))
    st = variants.state_of(m)
    first = next(iter(st.targets.values()))
    pair = first.adapter_A.numel() + first.adapter_B.numel()
    assert all(mod.adapter_A is first.adapter_A for mod in st.targets.values())  # one pair, shared
    assert variants.summary(m).endswith(f"; {pair:,} frozen adapter values in buffers")


# -- merge, unmerge, enable, disable ------------------------------------------------------------------------
@pytest.mark.parametrize("name,cfg", [("lora", {"r": 4, "alpha": 8.0}), ("ia3", {}), ("road", {"group_size": 8}),
                                      ("dora", {"r": 4, "alpha": 8.0}), ("oft", {"block_size": 8}),
                                      ("pissa", {"r": 4, "alpha": 8.0})])
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])  # biased q/k/v; Conv1D
def test_merge_unmerge_and_disable(name, cfg, arch):
    m, ids = _model(arch)
    base = models.logits(m, ids).detach()
    variants.attach(m, variants.config(name, **cfg))
    perturb(m, 0)
    y = models.logits(m, ids).detach()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    variants.merge(m)
    assert variants.is_merged(m)
    ym = models.logits(m, ids).detach()
    assert (ym - y).norm() / y.norm() < 1e-5  # fp32: W_eff rounded once, against a ~1e-1 adapter effect
    assert (y - base).norm() / base.norm() > 1e-3
    with pytest.raises(RuntimeError, match="already merged"):
        variants.merge(m)
    with pytest.raises(RuntimeError, match="unmerge"):
        variants.save(m, "/tmp/never-written.safetensors")
    variants.unmerge(m)
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())  # exact, biases included
    assert torch.equal(models.logits(m, ids), y)
    with variants.disabled(m):
        assert torch.equal(models.logits(m, ids), base)  # PiSSA too: the base's own W while disabled
    assert torch.equal(models.logits(m, ids), y)
    variants.merge(m)
    variants.detach(m)  # detaching a merged model restores the base
    assert torch.equal(models.logits(m, ids), base)


def test_dropout_acts_on_the_adapter_input_in_training_only():
    m, ids = _model()
    variants.attach(m, variants.config("lora", r=4, dropout=0.5))
    perturb(m, 0)
    y = models.logits(m, ids).detach()
    assert torch.equal(models.logits(m, ids), y)  # eval: no dropout
    m.train()
    torch.manual_seed(0)
    y_train = models.logits(m, ids).detach()
    with variants.disabled(m):
        base = models.logits(m, ids).detach()
    assert not torch.equal(y_train, y)
    assert not torch.equal(y_train, base)  # dropout on the adapter branch, the base path intact
    with pytest.raises(ValueError, match=r"dropout: must be in \[0, 1\)"):
        variants.config("lora", dropout=1.0)
    with pytest.raises(ValueError, match="dropout: is not supported for DoRA"):
        variants.config("dora", dropout=0.1)


# -- checkpoints ---------------------------------------------------------------------------------------------
def _edited(src, dst, tensors=lambda t: t, meta=lambda m: m):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(src), "pt") as f:
        md, ts = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors(ts), str(dst), metadata=meta(md))
    return dst


def test_load_refuses_what_it_used_to_accept_silently(tmp_path):
    """NaN/Inf tensors, tensors of another dtype than the config's, metadata r that disagrees with the
    tensors, and a PiSSA checkpoint made on another base model: each refused naming the problem, the
    model left bare."""
    import json
    m, _ = _model()
    variants.attach(m, variants.config("pissa", r=4))
    perturb(m, 0)
    good = variants.save(m, tmp_path / "good.safetensors")
    nan = _edited(good, tmp_path / "nan.safetensors",
                  lambda t: {k: v.clone().fill_(float("nan")) if k.endswith("adapter_A") else v for k, v in t.items()})
    fp16 = _edited(good, tmp_path / "fp16.safetensors",
                   lambda t: {k: v.half() if ".adapter_" in k else v for k, v in t.items()})

    def r8(md):
        cfg = json.loads(md["config"])
        cfg["fields"]["r"] = 8
        return {**md, "config": json.dumps(cfg)}
    r8_file = _edited(good, tmp_path / "r8.safetensors", meta=r8)
    cases = [(nan, "non-finite values \\(NaN/Inf\\) in \\['model.layers.0"),
             (fp16, "adapter tensors of another dtype than the config's float32: \\[.*\\(float16\\)"),
             (r8_file, "metadata disagrees with itself: config r=8, per-layer ranks \\['model.layers.0.*: 4")]
    for path, msg in cases:
        bare = models.build("qwen2")
        with pytest.raises(ValueError, match=msg):
            variants.load(bare, path)
        assert not hasattr(bare, "_adapter_audit_state")
    with pytest.raises(ValueError, match="made from another base model .* load it into the base model it was trained"):
        variants.load(models.build("qwen2", seed=1), good)
    variants.load(models.build("qwen2").to(torch.bfloat16), good)  # the same base in another dtype loads


def test_save_pretrained_with_a_base_rewriting_adapter_is_refused_until_merged(tmp_path):
    """PiSSA + save_pretrained used to write W_res without the adapter (a reloaded model 0.32 off both the
    base and the adapted one); now it is refused saying what to do, and after a merge it writes the
    adapted model as an ordinary checkpoint."""
    from transformers import AutoModelForCausalLM
    m, ids = _model("qwen3")
    variants.attach(m, variants.config("pissa", r=4))
    perturb(m, 0)
    y = models.logits(m, ids).detach()
    with pytest.raises(RuntimeError, match=r"variants.merge\(model\) first .* variants.save\(model, path\)"):
        m.save_pretrained(tmp_path / "hf")
    variants.merge(m)
    m.save_pretrained(tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert (models.logits(again, ids) - y).norm() / y.norm() < 1e-5
    assert not any(".adapter_" in k for k in again.state_dict())
    variants.detach(m)
    assert "save_pretrained" not in m.__dict__
