"""pytest-benchmark: forward and forward+backward of the base model, each variant (ours) and its peft twin.

Ours and peft are measured side by side: pytest-benchmark times ours, and before each of its
rounds the setup hook times peft once, so the two alternate round by round and machine noise hits
both alike. peft's median and the ratio go to each benchmark's extra_info; `nox -s bench` prints
the table (benchmarks/table.py).
"""
from __future__ import annotations

import statistics
import time

import pytest

import variants
from bench_setup import bench_model, contenders, fwd, fwd_bwd, inputs

ROUNDS = 9
MODES = {"fwd": fwd, "fwd_bwd": fwd_bwd}


@pytest.fixture(scope="module")
def base():
    model = bench_model()
    model.requires_grad_(False)  # frozen, as under an adapter; only the input embedding gets a gradient,
    model.get_input_embeddings().weight.requires_grad_(True)  # so the backward still runs through every layer
    return model


@pytest.fixture(scope="module")
def ids(base):
    return inputs(base)


@pytest.mark.parametrize("mode", list(MODES))
def test_base(benchmark, base, ids, mode):
    benchmark.group = mode
    benchmark.extra_info.update(name="base", mode=mode)
    MODES[mode](base, ids)
    benchmark.pedantic(MODES[mode], args=(base, ids), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", sorted(variants.REGISTRY))
def test_variant(benchmark, base, ids, name, mode):
    fn, models = MODES[mode], contenders(name, base)
    ours, peft = models["ours"], models.get("peft")
    peft_times: list[float] = []

    def time_peft():
        if peft is not None:
            t0 = time.perf_counter()
            fn(peft, ids)
            peft_times.append(time.perf_counter() - t0)

    fn(ours, ids)  # warm-up both
    time_peft()
    peft_times.clear()
    benchmark.group = mode
    benchmark.pedantic(fn, args=(ours, ids), setup=time_peft, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(name=name, mode=mode)
    if peft_times:
        peft_median = statistics.median(peft_times)
        benchmark.extra_info.update(peft_median=peft_median, ratio_vs_peft=benchmark.stats.stats.median / peft_median)
