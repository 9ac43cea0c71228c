"""Calibration batches with an attention mask and labels: the pair the init check builds, and our
collection dropping the tokens they mask out."""
from __future__ import annotations

import torch

from audit import models
from audit.calibration_mask import IGNORE, influence, masked_pair
from variants._calibration import collect_inputs, kept_tokens


def _batches():
    return [torch.randint(0, 100, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]


def test_pair_agrees_on_kept_tokens_and_differs_on_every_masked_one():
    first, second = masked_pair(_batches(), vocab=100, seed=0)
    masked_any = 0
    for a, b in zip(first, second):
        keep = kept_tokens(a)
        assert torch.equal(keep, kept_tokens(b))
        assert torch.equal(a["input_ids"][keep], b["input_ids"][keep])
        assert (a["input_ids"][~keep] != b["input_ids"][~keep]).all()
        assert int(b["input_ids"].max()) < 100
        # both kinds of mask occur, and the masked tokens are a tail (right padding after an ignored span)
        assert (a["attention_mask"] == 0).any() and ((a["labels"] == IGNORE) & (a["attention_mask"] == 1)).any()
        assert all(not keep[i, j] or keep[i, :j].all() for i in range(keep.shape[0]) for j in range(keep.shape[1]))
        masked_any += int((~keep).sum())
    assert masked_any > 0
    assert masked_pair([torch.randn(2, 8)], vocab=100, seed=0) is None  # not token ids: no pair


def test_collect_inputs_drops_masked_tokens_and_keeps_the_rest_in_order():
    model = models.build("qwen3", seed=0).eval()
    layer = "model.layers.0.mlp.down_proj"
    first, second = masked_pair([models.example_inputs(model, batch=4, seed=7)], vocab=model.config.vocab_size,
                                seed=0)
    seen = {}
    for tag, data in (("first", first), ("second", second), ("plain", [first[0]["input_ids"]])):
        rows = []
        collect_inputs(model, {layer: model.get_submodule(layer)}, data, lambda n, x: rows.append(x))
        seen[tag] = torch.cat(rows)
    keep = kept_tokens(first[0])
    assert seen["first"].shape[0] == int(keep.sum()) < seen["plain"].shape[0]
    assert torch.equal(seen["first"], seen["second"])  # the masked tokens' content never reaches the layer
    assert influence({"l": {"A": seen["first"]}}, {"l": {"A": seen["second"]}}) == 0.0
    assert influence({"l": {"A": seen["first"]}}, {"l": {"A": seen["first"][:-1]}}) == 1.0  # another shape
