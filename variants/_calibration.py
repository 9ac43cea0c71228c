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


def collect_inputs(model: nn.Module, modules: dict[str, nn.Module], data: Iterable[Any],
                   on_input: Callable[[str, torch.Tensor], None]) -> int:
    """Run every item of ``data`` through ``model`` (eval, no grad); call on_input(name, x2d) for
    each target's input flattened to (tokens, d_in). Returns the number of items run."""
    if data is None:
        raise ValueError("calibration_data is required here (an iterable of model inputs)")
    handles = [m.register_forward_pre_hook(
        lambda m, args, _n=name: on_input(_n, args[0].detach().reshape(-1, args[0].shape[-1])))
        for name, m in modules.items()]
    was_training = model.training
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            for batch in data:
                run_model(model, batch)
                n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration_data is empty: give at least one batch of model inputs")
    return n
