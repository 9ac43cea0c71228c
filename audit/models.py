"""The model zoo: tiny models built offline from transformers configs with fixed seeds.

Every decoder has fewer kv heads than heads (non-square k/v projections); qwen2 has biased q/k/v;
``gpt2`` projects with transformers' Conv1D (weight stored transposed) and a fused q/k/v; ``phi3``
has fused q/k/v and gate/up projections; ``mlp`` is a toy MLP with non-square biased layers. Models from a local
path (``--model-path``) are ``audit.local_models``'.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

VOCAB = 128
SEQ = 12
# One decoder layer holds every projection kind once (q, k, v, o, gate, up, down); a second identical
# layer adds no new kind of layer, only cost (the default audit's budget is 60 s for sixteen methods).
# The multi-layer path (layer selection by index, an adapted block feeding the next) is the toy MLP's:
# it has two blocks.
_TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
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


def _qwen3(n_layers: int = 1) -> nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3ForCausalLM(Qwen3Config(head_dim=16, **{**_TINY, "num_hidden_layers": n_layers}))


def _qwen2(n_layers: int = 1) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2ForCausalLM(Qwen2Config(**{**_TINY, "num_hidden_layers": n_layers}))


def _llama(n_layers: int = 1) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(head_dim=16, **{**_TINY, "num_hidden_layers": n_layers}))


def _gpt2(n_layers: int = 1) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    # no dropout: training runs side by side must see the same function
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=n_layers, n_head=4, n_inner=96,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=0))


def _phi3(n_layers: int = 1) -> nn.Module:
    from transformers import Phi3Config, Phi3ForCausalLM
    return Phi3ForCausalLM(Phi3Config(**{**_TINY, "num_hidden_layers": n_layers}, original_max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]
    description: str
    # what a failure pattern across models can point at: "bias" (biased adapted layers), "Conv1D"
    # (weights stored transposed), "fused" (one layer computing several projections)
    traits: frozenset[str] = frozenset()


ZOO: dict[str, ModelSpec] = {
    "qwen3": ModelSpec("qwen3", _qwen3, "tiny Qwen3 (1 layer, hidden 64, 4 heads / 2 kv heads, q/k norm, no bias)"),
    "qwen2": ModelSpec("qwen2", _qwen2, "tiny Qwen2 (1 layer, hidden 64, 4 heads / 2 kv heads, biased q/k/v)",
                       frozenset({"bias"})),
    "llama": ModelSpec("llama", _llama, "tiny Llama (1 layer, hidden 64, 4 heads / 2 kv heads, no bias)"),
    "mlp": ModelSpec("mlp", ToyMLP, "toy MLP (biased non-square up 48→80 / down 80→48)", frozenset({"bias"})),
    "gpt2": ModelSpec("gpt2", _gpt2, "tiny GPT-2 (1 layer, hidden 64, transformers Conv1D layers storing Wᵀ, fused biased "
                                     "c_attn 64→192, MLP 64→96→64)", frozenset({"bias", "Conv1D", "fused"})),
    "phi3": ModelSpec("phi3", _phi3, "tiny Phi-3 (1 layer, hidden 64, fused qkv_proj 64→128 and gate_up_proj 64→192, "
                                     "4 heads / 2 kv heads, no bias)", frozenset({"fused"})),
}


def _dense(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32, n_layers: int | None = None) -> nn.Module:
    """A fresh zoo model in eval mode, weights from ``seed`` (same seed, same weights); ``n_layers``
    overrides its depth (decoder layers, MLP blocks) for tests of the multi-layer path."""
    if name not in ZOO:
        raise ValueError(f"unknown model {name!r}; zoo models: {sorted(ZOO)} (or use a local path)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZOO[name].build(**({} if n_layers is None else {"n_layers": n_layers}))
        # transformers zero-initialises Linear and Conv1D biases, which would hide bias bugs (IA3 must
        # scale b, RoAd must rotate it, DoRA must leave it alone): give them seeded non-zero values.
        with torch.no_grad():
            for m in model.modules():
                if _dense(m) and m.bias is not None and not m.bias.any():
                    m.bias.uniform_(-0.1, 0.1)
    return model.to(dtype).eval()


_TORCH_STATE = frozenset({"_parameters", "_buffers", "_modules"})
_ATOMIC = frozenset({bool, int, float, str, type(None)})
_CONTAINERS = frozenset({OrderedDict, set})


def clone(model: nn.Module) -> nn.Module:
    """A deep copy of a module tree, about three times faster than ``copy.deepcopy`` on the zoo's models.

    deepcopy rebuilds every module through ``__reduce_ex__``, with a dozen hook OrderedDicts each;
    here each module is copied shallowly, its parameters, buffers and submodules are cloned (shared
    ones, tied weights included, stay shared within the copy), hook dicts and sets get their own
    containers, and every other attribute (the config, an adapter's state) is deep-copied through one
    memo after the submodules, so an object shared by many modules, or referring to a submodule,
    stays one shared object of the copy. Dict keys keep their order (``__dict__`` order does not).
    """
    memo: dict[int, object] = {}

    def tensor(t):
        if t is None:
            return None
        if id(t) not in memo:
            c = t.detach().clone()
            memo[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
        return memo[id(t)]

    def module(m: nn.Module) -> nn.Module:
        if id(m) in memo:
            return memo[id(m)]
        new = object.__new__(type(m))
        memo[id(m)] = new
        # submodules first: an attribute referring to one (an adapter's state) then finds its copy in memo
        d = {"_parameters": {k: tensor(p) for k, p in m._parameters.items()},
             "_buffers": {k: tensor(b) for k, b in m._buffers.items()},
             "_modules": {k: None if c is None else module(c) for k, c in m._modules.items()}}
        for k, v in m.__dict__.items():
            kind = type(v)
            if kind in _ATOMIC:
                d[k] = v
            elif k in _TORCH_STATE:
                continue
            elif kind in _CONTAINERS and k[0] == "_":
                d[k] = kind(v)  # hooks and torch/HF bookkeeping: own container, same entries
            elif isinstance(v, torch.Tensor):
                d[k] = tensor(v)
            else:
                d[k] = copy.deepcopy(v, memo)
        object.__setattr__(new, "__dict__", d)
        return new

    return module(model)


def example_inputs(model: nn.Module, batch: int = 2, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    """Deterministic token ids for a model's vocabulary."""
    vocab = model.get_input_embeddings().num_embeddings
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The output the checks audit: the logits where the model has a head, else its final hidden states
    (an encoder without one, such as a BertModel); an encoder-decoder gets ``ids`` as its decoder input too."""
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        out = model(input_ids=ids, decoder_input_ids=ids)
    else:
        out = model(ids)
    if isinstance(out, torch.Tensor):
        return out
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"{type(model).__name__} returned {type(out).__name__} with neither logits nor "
                    "last_hidden_state: no output to audit")
