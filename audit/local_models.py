"""Models from a local path (``--model-path``): any transformers model whose linear layers can be adapted.

The class is the one config.json's ``architectures`` names (transformers' own class; remote code is never
run), or without architectures the model type's causal LM, else its base model. The audited output is
the logits where the model has a head and its final hidden states where it has none (a ``BertModel``,
the encoder of a sentence-embedding model): either is a differentiable function of every adapted layer,
which is all the checks need (``audit.models.logits``). An encoder-decoder gets the token ids as its
decoder input too. Refused, naming why, before any weight is read: what cannot be audited (no token
input, no linear layer to adapt, remote code, no weights) and what is not there (no folder, no
config.json, a hub id not in the local cache: nothing is ever downloaded).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".pth", ".h5", ".msgpack")
HIDDEN_STATES = "final hidden states"
LOGITS = "logits"


@dataclass(frozen=True)
class LocalModel:
    """What ``check_local`` found: the class to load and which output the checks audit."""

    class_name: str
    output: str  # LOGITS or HIDDEN_STATES

    def describe(self) -> str:
        if self.output == HIDDEN_STATES:
            return f"{self.class_name}; no head, so the audited output is its {HIDDEN_STATES}"
        return f"{self.class_name}; the audited output is its {LOGITS}"


def _dense(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def _config(p: str):
    from transformers import AutoConfig
    if os.path.isdir(p):
        if not os.path.isfile(os.path.join(p, "config.json")):
            raise ValueError(f"model path {p!r}: the folder has no config.json (a Hugging Face checkpoint "
                             "folder holds config.json next to its weights)")
        try:
            return AutoConfig.from_pretrained(p, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any failure here is the user's config
            raise ValueError(f"model path {p!r}: config.json cannot be read: {type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    if os.path.exists(p):
        raise ValueError(f"model path {p!r} is a file, not a checkpoint folder")
    try:
        return AutoConfig.from_pretrained(p, local_files_only=True)
    except Exception:  # noqa: BLE001 - missing folder, bad hub id, not cached: all the same to the user
        raise ValueError(f"model path {p!r}: not a folder and not in the local Hugging Face cache "
                         "(hub ids are never downloaded)") from None


def _model_class(p: str, cfg) -> type:
    """transformers' class for the checkpoint: its named architecture, else the causal LM, else the base model."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES
    archs = list(getattr(cfg, "architectures", None) or [])
    if archs:
        found = [getattr(transformers, a) for a in archs if isinstance(getattr(transformers, a, None), type)]
        if not found:
            raise ValueError(f"model path {p!r}: architectures {archs} are not transformers classes (custom "
                             "modeling code, which the audit never runs: trust_remote_code is off)")
        return found[0]
    model_type = getattr(cfg, "model_type", None)
    for table in (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES):
        name = table.get(model_type)
        name = name if isinstance(name, str) or name is None else name[0]
        if name and isinstance(getattr(transformers, name, None), type):
            return getattr(transformers, name)
    raise ValueError(f"model path {p!r}: config.json names no architectures and model_type {model_type!r} "
                     "has no model class in transformers")


def _output(model: nn.Module) -> str:
    """LOGITS when the model computes them (an LM, classification or other head), else HIDDEN_STATES."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    base = {n if isinstance(n, str) else n[0] for n in MODEL_MAPPING_NAMES.values()}
    return HIDDEN_STATES if type(model).__name__ in base else LOGITS


def check_local(path_or_id: str) -> LocalModel:
    """Validate a ``--model-path`` from its config alone, before any weight is loaded.

    The structure check builds the model on the meta device (no memory, no weights): it needs token
    ids as input and an ``nn.Linear`` or ``Conv1D`` to adapt besides an output head."""
    from transformers.utils import logging as hf_logging

    p = str(path_or_id)
    cfg = _config(p)
    cls = _model_class(p, cfg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # config warnings (token ids beyond a tiny vocab) are not our news
    try:
        with torch.device("meta"):
            model = cls(cfg)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"model path {p!r}: {cls.__name__} cannot be built from its config: "
                         f"{type(e).__name__}: {str(e)[:200]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embed, nn.Embedding):
        raise ValueError(f"model path {p!r}: {cls.__name__} takes no token ids (its input is not an embedding "
                         "of token ids: an image, audio or other model), which the audit's inputs are")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    dense = [n for n, m in model.named_modules() if _dense(m) and m is not head and n.rsplit(".", 1)[-1] != "lm_head"]
    if not dense:
        raise ValueError(f"model path {p!r}: {cls.__name__} has no nn.Linear or Conv1D layer to adapt "
                         "besides its output head")
    if os.path.isdir(p) and not any(f.endswith(WEIGHT_SUFFIXES) for f in os.listdir(p)):
        raise ValueError(f"model path {p!r}: the folder has config.json but no weights "
                         f"(no {', '.join('*' + x for x in WEIGHT_SUFFIXES)} file)")
    return LocalModel(cls.__name__, _output(model))


def load_local(path_or_id: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The checkpoint's model in eval mode, from a local folder, or a hub id only if already cached
    (never downloaded); the class as ``check_local`` resolves it."""
    from transformers.utils import logging as hf_logging
    p = str(path_or_id)
    cls = _model_class(p, _config(p))
    hf_logging.disable_progress_bar()  # a bar per load between the audit's own progress lines
    try:
        model = cls.from_pretrained(p, dtype=dtype, local_files_only=True)
    except OSError as e:
        raise ValueError(f"model path {p!r} could not be loaded: {e}") from None
    return model.eval()
