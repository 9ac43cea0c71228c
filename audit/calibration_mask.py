"""Does a data-driven init ignore the calibration tokens the batch masks out?

A calibration batch of a causal LM carries an ``attention_mask`` (0: padding) and ``labels`` (-100: a
token the loss ignores, e.g. the prompt); a data-driven init (EVA's principal directions of the layer
inputs, arXiv 2410.07170 §3.1 and peft's ``prepare_model_inputs_fn_language_modeling``) must take only
the tokens both keep. Two calibration sets are built that agree on every kept token and differ on every
masked one (right padding after a label-ignored tail, so no kept token attends to a masked one); the
subject's init on each must then be the same: a difference is the masked tokens' influence.
"""
from __future__ import annotations

import inspect

import torch

IGNORE = -100  # the label that marks a token the loss (and the init) ignores: transformers' ignore_index

# Relative bound on the two inits' difference, in machine epsilons of the dtype: an implementation that drops the
# masked tokens sees the same kept tokens through the same computation, so its inits agree to the bit; a few
# epsilons are allowed (another order of summation over the same rows). One that keeps them sees other tokens:
# O(1) differences.
ULPS = 8


def masked_pair(batches: list, vocab: int, seed: int, ignore_label: int | None = IGNORE
                ) -> tuple[list[dict], list[dict]] | None:
    """Two calibration sets from ``batches`` of token ids (B, T): per row a kept head, then a label-ignored
    span (attention 1, labels ``ignore_label``), then padding (attention 0); the masked positions hold other
    token ids in the second set. ``ignore_label`` None (an init told not to use labels): the labelled span is
    kept, so only the padding differs. None where the batches are not token ids."""
    if not batches or not all(isinstance(b, torch.Tensor) and b.dim() == 2 and not b.is_floating_point()
                              for b in batches):
        return None
    g = torch.Generator().manual_seed(seed + 4242)
    first, second = [], []
    for ids in batches:
        rows, t = ids.shape
        pos = torch.arange(t)
        # row i keeps a head of t/2 .. t tokens: some rows unmasked, some with both masks
        ignored = torch.tensor([(i % 3) * t // 8 for i in range(rows)])
        padded = torch.tensor([((i + 1) % 3) * t // 8 for i in range(rows)])
        keep_to = t - ignored - padded
        attention = (pos[None, :] < (t - padded)[:, None]).long()
        labels = ids.clone()
        labels[pos[None, :] >= keep_to[:, None]] = IGNORE if ignore_label is None else ignore_label
        masked = pos[None, :] >= (keep_to if ignore_label is not None else t - padded)[:, None]
        other = ids.clone()
        other[masked] = (ids[masked] + torch.randint(1, vocab, (int(masked.sum()),), generator=g)) % vocab
        first.append({"input_ids": ids, "attention_mask": attention, "labels": labels})
        second.append({"input_ids": other, "attention_mask": attention, "labels": labels})
    return first, second


def influence(a: dict, b: dict) -> float:
    """max over layers and tensors of max|a − b| / max|a| (the two inits' relative difference); a layer whose
    tensors differ in shape (another rank allocated) counts as 1."""
    worst = 0.0
    for name, tensors in a.items():
        for k, t in tensors.items():
            u = b.get(name, {}).get(k)
            if u is None or u.shape != t.shape:
                return 1.0
            scale = float(t.detach().double().abs().max()) or 1.0
            worst = max(worst, float((t.detach().double() - u.detach().double()).abs().max()) / scale)
    return worst


def _reference(name: str):
    from references import paper
    return paper.get(name) if name in paper.VARIANTS else None


def measure(cell, attach_state) -> None:
    """The ``masked_token_influence`` row of ``cell`` (the init check, the plan's first dtype only: which tokens
    an init reads does not depend on the dtype). ``attach_state(calibration)``: the subject's initial state
    after attaching with that calibration."""
    base = cell.base()
    emb = getattr(base, "get_input_embeddings", lambda: None)()
    takes_mask = "attention_mask" in inspect.signature(base.forward).parameters
    cfg = cell.config()
    label = cfg.get("label_mask_value", IGNORE) if cfg.get("use_label_mask", True) else None
    if not getattr(_reference(cell.card.name), "LABEL_MASK", True):  # the method's tokens are all attended ones (CorDA)
        label = None
    pair = (masked_pair(cell.calibration(), emb.num_embeddings, cell.seed, label)
            if emb is not None and takes_mask else None)
    if pair is None:
        cell.row("masked_token_influence", None, None, status="n/a",
                 message="the model takes no token ids and attention mask: masked calibration tokens do not apply")
        return
    eps = torch.finfo(torch.float32 if cell.dtype == torch.float64 else cell.dtype).eps
    value = influence(attach_state(pair[0]), attach_state(pair[1]))
    cell.row("masked_token_influence", value, ULPS * eps,
             message="max relative difference of the subject's init between two calibration sets that differ only "
                     "in tokens the attention mask or labels = -100 exclude (right padding after an ignored tail); "
                     f"tolerance {ULPS} machine epsilons of the dtype: an init that drops them reads the same tokens")
