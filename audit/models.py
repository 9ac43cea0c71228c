"""The model zoo: tiny models built offline from transformers configs with fixed seeds.

Every decoder has fewer kv heads than heads (non-square k/v projections); qwen2 has biased q/k/v;
``mlp`` is a toy MLP with non-square biased layers. ``load_local(path)`` loads any local HF
checkpoint (or a hub id already in the local cache) without touching the network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

VOCAB = 128
SEQ = 12
_TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)


class ToyMLP(nn.Module):
    """Embedding → two biased non-square MLP blocks (up 48→80, down 80→48) → head; no attention."""

    def __init__(self, vocab: int = VOCAB, d: int = 48, hidden: int = 80, n_layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.ModuleDict({"up_proj": nn.Linear(d, hidden), "down_proj": nn.Linear(hidden, d)})
                                    for _ in range(n_layers))
        self.head = nn.Linear(d, vocab)

    def get_input_embeddings(self) -> nn.Embedding:
        """As on HF models, so the harness treats every zoo model alike."""
        return self.embed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        for blk in self.layers:
            h = h + blk["down_proj"](torch.nn.functional.gelu(blk["up_proj"](h)))
        return self.head(h)


def _qwen3() -> nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3ForCausalLM(Qwen3Config(head_dim=16, **_TINY))


def _qwen2() -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2ForCausalLM(Qwen2Config(**_TINY))


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(head_dim=16, **_TINY))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    description: str


ZOO: dict[str, ModelSpec] = {
    "qwen3": ModelSpec("qwen3", _qwen3, "tiny Qwen3 (hidden 64, 4 heads / 2 kv heads, q/k norm, no bias)"),
    "qwen2": ModelSpec("qwen2", _qwen2, "tiny Qwen2 (hidden 64, 4 heads / 2 kv heads, biased q/k/v)"),
    "llama": ModelSpec("llama", _llama, "tiny Llama (hidden 64, 4 heads / 2 kv heads, no bias)"),
    "mlp": ModelSpec("mlp", ToyMLP, "toy MLP (biased non-square up 48→80 / down 80→48)"),
}


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fresh zoo model in eval mode, weights from ``seed`` (same seed, same weights)."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; zoo models: {sorted(ZOO)} (or use a local path)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZOO[name].build()
        # transformers zero-initialises Linear biases, which would hide bias bugs (IA3 must scale b,
        # RoAd must rotate it, DoRA must leave it alone): give them seeded non-zero values.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.Linear) and m.bias is not None and not m.bias.any():
                    m.bias.uniform_(-0.1, 0.1)
    return model.to(dtype).eval()


def example_inputs(model: nn.Module, batch: int = 2, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids for a model's vocabulary."""
    vocab = model.get_input_embeddings().num_embeddings
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def load_local(path_or_id: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A causal LM from a local directory, or a hub id only if already cached (never downloads)."""
    from transformers import AutoModelForCausalLM
    local_only = not os.path.isdir(path_or_id)
    try:
        model = AutoModelForCausalLM.from_pretrained(path_or_id, torch_dtype=dtype, local_files_only=True)
    except OSError as e:
        where = "is not a directory and is not in the local HF cache" if local_only else "could not be loaded"
        raise ValueError(f"model path {path_or_id!r} {where}: {e}") from None
    return model.eval()
