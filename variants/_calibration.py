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


def causal_lm_loss(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """The next-token cross-entropy of a calibration batch (mean over the predicted tokens): logits (B, T, V) at
    position t predict token t+1 of ``labels`` (a dict batch's, else its input ids); labels = -100 and
    attention_mask 0 mark tokens the loss ignores (transformers' ForCausalLMLoss convention), computed in float32."""
    ids = batch["input_ids"] if isinstance(batch, dict) else batch
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise TypeError("a gradient-driven init needs token-id calibration batches (B, T) of a causal LM: tensors "
                        f"or dicts with input_ids, got {type(ids).__name__}")
    labels = batch.get("labels") if isinstance(batch, dict) else None
    labels = (ids if labels is None else labels).clone()
    if isinstance(batch, dict) and batch.get("attention_mask") is not None:
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    pred = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels[:, 1:].reshape(-1).to(pred.device),
                                             ignore_index=IGNORE_INDEX)


def model_logits(model: nn.Module, batch: Any) -> torch.Tensor:
    """The logits of one calibration item (a dict's labels are not passed: the model computes no loss of its own)."""
    if isinstance(batch, dict):
        batch = {k: v for k, v in batch.items() if k != "labels"}
    out = run_model(model, batch)
    return out if isinstance(out, torch.Tensor) else out.logits


def collect_gradients(model: nn.Module, modules: dict[str, nn.Module],
                      data: Iterable[Any]) -> tuple[dict[str, torch.Tensor], int]:
    """({name: the mean over batches of ∂loss/∂W, float64 (d_out, d_in)}, batches), loss = causal_lm_loss of each
    batch and W each target's canonical weight: per batch Σ over the layer's tokens of (∂loss/∂y)ᵀ x (x its
    input, y its output), accumulated in float64 from the autograd gradients of the outputs. The stored weights
    get requires_grad for the pass only (so that the outputs are in the graph); no .grad is written."""
    from ._layers import features
    if data is None:
        raise ValueError("calibration_data is required here (an iterable of model inputs)")
    seen: dict[str, list] = {n: [] for n in modules}
    handles = [m.register_forward_hook(lambda m, args, out, _n=name: seen[_n].append((args[0], out)))
               for name, m in modules.items()]
    flags = {n: m.weight.requires_grad for n, m in modules.items()}
    sums = {n: torch.zeros(features(m)[1], features(m)[0], dtype=torch.float64) for n, m in modules.items()}
    was_training = model.training
    model.eval()
    n = 0
    try:
        for m in modules.values():
            m.weight.requires_grad_(True)
        for batch in data:
            for v in seen.values():
                v.clear()
            with torch.enable_grad():
                loss = causal_lm_loss(model_logits(model, batch), batch)
                calls = [(name, x, y) for name, v in seen.items() for x, y in v]
                grads = torch.autograd.grad(loss, [y for _, _, y in calls], allow_unused=True)
            for (name, x, y), g in zip(calls, grads):
                if g is not None:
                    g64 = g.detach().to("cpu", torch.float64).reshape(-1, y.shape[-1])
                    sums[name] += g64.t() @ x.detach().to("cpu", torch.float64).reshape(-1, x.shape[-1])
            n += 1
    finally:
        for h in handles:
            h.remove()
        for name, m in modules.items():
            m.weight.requires_grad_(flags[name])
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration_data is empty: give at least one batch of model inputs")
    return {k: v / n for k, v in sums.items()}, n
