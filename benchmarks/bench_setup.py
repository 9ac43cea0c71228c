"""The bench configuration and the contenders: base model, each of our variants, its peft twin.

Default size is CPU-friendly (hidden 512, 4 layers, batch 4 × seq 128, float32); set
BENCH_HIDDEN / BENCH_LAYERS / BENCH_SEQ / BENCH_BATCH / BENCH_DTYPE for the issue's larger
configuration (e.g. hidden 1024, seq 256). Targets: every attention and MLP projection
(IA3: the paper's k/v; ia3_ff: the down-projection input).
"""
from __future__ import annotations

import copy
import os

import torch

import variants
from audit import models
from audit.cards import get
from audit.state import perturb, snapshot
from references import peft_bridge as bridge

HIDDEN = int(os.environ.get("BENCH_HIDDEN", 512))
LAYERS = int(os.environ.get("BENCH_LAYERS", 4))
SEQ = int(os.environ.get("BENCH_SEQ", 128))
BATCH = int(os.environ.get("BENCH_BATCH", 4))
DTYPE = getattr(torch, os.environ.get("BENCH_DTYPE", "float32"))
CONFIG = {"r": 8, "alpha": 16.0, "group_size": 64}


def bench_model() -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=3 * HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=HIDDEN // 64, num_key_value_heads=max(1, HIDDEN // 128), head_dim=64,
                      max_position_embeddings=max(SEQ, 64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(cfg)
    return model.to(DTYPE).eval()


def variant_config(name: str) -> dict:
    """Bench fields: rank 8 (AntiPaSTO: r divisible by its block size), RoAd group 64, and the card's
    peft-comparison overrides (DeLoRA runs peft's init) so ours and peft do the same work."""
    card = get(name)
    fields = {k: v for k, v in CONFIG.items() if k in {f for f in variants.REGISTRY[name].Config.__dataclass_fields__}}
    return {**fields, **(card.peft_config or {})}


def contenders(name: str, base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{"ours": adapted copy, "peft": its peft twin with the same state (if peft has it)}."""
    ours = copy.deepcopy(base)
    cal = None
    if variants.REGISTRY[name].needs_calibration:
        cal = [models.example_inputs(base, batch=2, seq=32, seed=s) for s in (1, 2)]
    variants.attach(ours, variants.config(name, **variant_config(name)), calibration_data=cal)
    perturb(ours, 0, get(name).perturb)
    out = {"ours": ours}
    if name in bridge.PEFT_VARIANTS:
        cfg = variants.state_of(ours).cfg.to_dict()
        names = list(variants.state_of(ours).targets)
        out["peft"] = bridge.build_peft_model(base, name, cfg, names,
                                              snapshot(ours, variants.REGISTRY[name].mutates_base_weight))
    return out


def inputs(model: torch.nn.Module) -> torch.Tensor:
    return models.example_inputs(model, batch=BATCH, seq=SEQ, seed=5)


def fwd(model, ids):
    with torch.no_grad():
        return models.logits(model, ids)


def fwd_bwd(model, ids):
    y = models.logits(model, ids)
    y.float().square().mean().backward()
