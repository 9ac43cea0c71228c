"""The bench configuration and the contenders: base model, each of our variants, its peft twin.

Default size is CPU-friendly (hidden 512, 4 layers, batch 4 × seq 128, float32 on CPU); the
environment sets the rest: BENCH_MODEL (qwen3, the default; gpt2: transformers Conv1D layers with a
fused c_attn; phi3: fused qkv_proj / gate_up_proj), BENCH_HIDDEN / BENCH_LAYERS / BENCH_SEQ /
BENCH_BATCH (the issue's larger configuration is hidden 1024, seq 256), BENCH_DTYPE (bfloat16),
BENCH_DEVICE (cuda), BENCH_ROUNDS. Where peft refuses the layers (its HRA, DeLoRA and RoAd take no
Conv1D), ours is timed against the base alone.
Targets: every attention and MLP projection (IA3: the paper's k/v; ia3_ff: the down-projection input).

fwd+bwd is the same for every contender: a forward, then the backward of a scalar loss down to the
input embedding, the one base tensor given a gradient (a frozen base has nothing else to
backpropagate to, and the adapted models then run the same backward through every layer).
"""
from __future__ import annotations

import copy
import os

import torch

import variants
from audit import models
from audit.cards import get
from audit.measure import sync
from audit.state import perturb
from audit.subjects.ours import ours_handle
from references import peft_bridge as bridge

HIDDEN = int(os.environ.get("BENCH_HIDDEN", 512))
LAYERS = int(os.environ.get("BENCH_LAYERS", 4))
SEQ = int(os.environ.get("BENCH_SEQ", 128))
BATCH = int(os.environ.get("BENCH_BATCH", 4))
DTYPE = getattr(torch, os.environ.get("BENCH_DTYPE", "float32"))
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 21))
MODEL = os.environ.get("BENCH_MODEL", "qwen3")
if ROUNDS < 6:
    raise ValueError(f"BENCH_ROUNDS={ROUNDS}: at least 6 rounds are needed for a 95% interval of the median")
CONFIG = {"r": 8, "alpha": 16.0, "group_size": 64}


def describe() -> str:
    return (f"{MODEL} hidden {HIDDEN}, {LAYERS} layers, batch {BATCH} × seq {SEQ}, {str(DTYPE).removeprefix('torch.')} "
            f"on {DEVICE}, r {CONFIG['r']}, {ROUNDS} rounds")


def bench_model() -> torch.nn.Module:
    """The frozen base, its input embedding given a gradient (see the module docstring)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _build()
    model = model.to(DEVICE, DTYPE).eval().requires_grad_(False)
    return _embedding_grad(model)


def _build() -> torch.nn.Module:
    import transformers as tf
    sizes = dict(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=3 * HIDDEN, num_hidden_layers=LAYERS,
                 num_attention_heads=HIDDEN // 64, num_key_value_heads=max(1, HIDDEN // 128),
                 max_position_embeddings=max(SEQ, 64))
    if MODEL == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=64, **sizes))
    if MODEL == "phi3":
        return tf.Phi3ForCausalLM(tf.Phi3Config(pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                                original_max_position_embeddings=max(SEQ, 64), **sizes))
    if MODEL == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=1024, n_embd=HIDDEN, n_inner=3 * HIDDEN, n_layer=LAYERS,
                                                n_head=HIDDEN // 64, n_positions=max(SEQ, 64), bos_token_id=0,
                                                eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    raise ValueError(f"BENCH_MODEL={MODEL!r}: one of qwen3, gpt2, phi3")


def _embedding_grad(model: torch.nn.Module) -> torch.nn.Module:
    model.get_input_embeddings().weight.requires_grad_(True)
    return model


def variant_config(name: str) -> dict:
    """Bench fields: rank 8 (AntiPaSTO: r divisible by its block size), RoAd group 64, and the card's
    peft-comparison overrides (DeLoRA runs peft's init) so ours and peft do the same work."""
    card = get(name)
    fields = {k: v for k, v in CONFIG.items() if k in variants.REGISTRY[name].Config.used_fields()}
    return {**fields, **(card.peft_config or {})}


def contenders(name: str, base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{"ours": adapted copy, "peft": its peft twin with the same state (if peft has it)}."""
    ours = copy.deepcopy(base)
    cal = None
    if variants.REGISTRY[name].needs_calibration:
        cal = [models.example_inputs(base, batch=2, seq=32, seed=s).to(DEVICE) for s in (1, 2)]
    variants.attach(ours, variants.config(name, **variant_config(name)), calibration_data=cal)
    perturb(ours, 0, get(name).perturb)
    out = {"ours": ours}
    if name in bridge.PEFT_VARIANTS:
        cfg = variants.state_of(ours).cfg.to_dict()
        names = list(variants.state_of(ours).targets)
        try:
            out["peft"] = bridge.build_peft_model(base, name, cfg, names,
                                                  ours_handle(ours).state(variants.REGISTRY[name].mutates_base_weight))
        except bridge.BridgeUnsupported:  # peft refuses these layers (Conv1D for its HRA, DeLoRA, RoAd)
            pass
    return {k: _embedding_grad(m) for k, m in out.items()}


def inputs(model: torch.nn.Module) -> torch.Tensor:
    return models.example_inputs(model, batch=BATCH, seq=SEQ, seed=5).to(DEVICE)


def fwd(model, ids):
    with torch.no_grad():
        models.logits(model, ids)
    sync(DEVICE)


def fwd_bwd(model, ids):
    models.logits(model, ids).float().square().mean().backward()
    model.zero_grad(set_to_none=True)  # as an optimizer step would, so every call allocates its gradients
    sync(DEVICE)
