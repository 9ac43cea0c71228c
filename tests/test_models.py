"""The audit zoo: deterministic, offline, non-square k/v, non-zero biases."""
import torch

from audit import models


def test_zoo_biases_are_nonzero():
    model = models.build("qwen2", seed=0)
    biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    assert biases and all(b.abs().min() > 0 for b in biases)


def test_zoo_is_deterministic_and_kv_non_square():
    for name in models.ZOO:
        a, b = models.build(name, seed=0), models.build(name, seed=0)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    k = models.build("qwen3").model.layers[0].self_attn.k_proj
    assert k.out_features < k.in_features
