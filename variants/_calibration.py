"""Running calibration inputs through a model and collecting what target layers see."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn


def run_model(model: nn.Module, batch: Any) -> Any:
    """Call the model on one calibration item: a tensor, a tuple of positional args, or a dict of kwargs."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    if isinstance(batch, dict):
        return model(**batch)
    raise TypeError(f"calibration_data items must be tensors, tuples of positional args or dicts of "
                    f"keyword args, got {type(batch).__name__}")


IGNORE_INDEX = -100  # labels that mark tokens the loss ignores (transformers' convention), ignored here too


def kept_tokens(batch: Any, ignore_label: int | None = IGNORE_INDEX) -> torch.Tensor | None:
    """(B, T) bool of the tokens a dict batch keeps: attention_mask ≠ 0 and labels ≠ ``ignore_label`` (None:
    labels mask nothing) (peft's EVA: prepare_model_inputs_fn_language_modeling, use_label_mask and
    label_mask_value); None where the batch masks nothing."""
    if not isinstance(batch, dict):
        return None
    keep = None
    if batch.get("attention_mask") is not None:
        keep = batch["attention_mask"].bool()
    if batch.get("labels") is not None and ignore_label is not None:
        lab = batch["labels"] != ignore_label
        keep = lab if keep is None else keep & lab
    return keep


def _rows(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """A layer input flattened to (tokens, d_in), only the kept tokens where the batch has a mask."""
    x = x.detach()
    if keep is not None and tuple(x.shape[:-1]) == tuple(keep.shape):
        return x[keep.to(x.device)]
    return x.reshape(-1, x.shape[-1])


def collect_inputs(model: nn.Module, modules: dict[str, nn.Module], data: Iterable[Any],
                   on_input: Callable[[str, torch.Tensor], None], ignore_label: int | None = IGNORE_INDEX) -> int:
    """Run every item of ``data`` through ``model`` (eval, no grad); call on_input(name, x2d) for
    each target's input flattened to (tokens, d_in), without the tokens a dict batch masks out
    (attention_mask 0, labels equal to ``ignore_label``). Returns the number of items run."""
    if data is None:
        raise ValueError("calibration_data is required here (an iterable of model inputs)")
    current: dict[str, torch.Tensor | None] = {"keep": None}
    handles = [m.register_forward_pre_hook(
        lambda m, args, _n=name: on_input(_n, _rows(args[0], current["keep"])))
        for name, m in modules.items()]
    was_training = model.training
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            for batch in data:
                current["keep"] = kept_tokens(batch, ignore_label)
                run_model(model, batch)
                n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration_data is empty: give at least one batch of model inputs")
    return n
