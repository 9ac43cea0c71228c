"""pytest-benchmark: forward and forward+backward of base, each variant (ours) and its peft twin.

Run with `nox -s bench`; it saves JSON and prints the ours-vs-peft table (benchmarks/table.py).
"""
from __future__ import annotations

import pytest

import variants
from references import peft_bridge as bridge
from bench_setup import bench_model, contenders, fwd, fwd_bwd, inputs

ROUNDS = 5


@pytest.fixture(scope="module")
def base():
    model = bench_model()
    model.get_input_embeddings().weight.requires_grad_(True)  # so the base's backward runs through every layer
    return model


@pytest.fixture(scope="module")
def ids(base):
    return inputs(base)


def _bench(benchmark, fn, model, ids, group):
    benchmark.group = group
    fn(model, ids)  # warm-up
    benchmark.pedantic(fn, args=(model, ids), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_base(benchmark, base, ids, mode):
    _bench(benchmark, {"fwd": fwd, "fwd_bwd": fwd_bwd}[mode], base, ids, f"base-{mode}")


CASES = [(n, who) for n in sorted(variants.REGISTRY) for who in ("ours", "peft")
         if who == "ours" or n in bridge.PEFT_VARIANTS]
_BUILT: dict[str, dict] = {}


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("name,who", CASES, ids=[f"{n}-{w}" for n, w in CASES])
def test_variant(benchmark, base, ids, name, who, mode):
    if name not in _BUILT:
        _BUILT.clear()  # keep one variant's models alive at a time
        _BUILT[name] = contenders(name, base)
    _bench(benchmark, {"fwd": fwd, "fwd_bwd": fwd_bwd}[mode], _BUILT[name][who], ids, f"{name}-{mode}")
