"""pytest-benchmark: forward and forward+backward of the base model, each variant (ours) and its peft twin.

Ours and peft are measured side by side: pytest-benchmark times ours, and each of its rounds
times peft once as well (before ours on even rounds, after on odd ones), so the two alternate
round by round and machine noise hits both alike. peft's median and the ratio go to each benchmark's extra_info; `nox -s bench` prints
the table (benchmarks/table.py).
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

import variants
from bench_setup import bench_model, contenders, fwd, fwd_bwd, inputs

ROUNDS = 15
MODES = {"fwd": fwd, "fwd_bwd": fwd_bwd}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two threads fighting other processes made the
    medians swing by 5-8% run to run; single-threaded they are far steadier (BENCH_THREADS overrides)."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", 1)))
    yield
    torch.set_num_threads(before)


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
    state = {"round": 0}

    def time_peft():
        if peft is not None:
            t0 = time.perf_counter()
            fn(peft, ids)
            peft_times.append(time.perf_counter() - t0)

    def before(*_a, **_k):  # even rounds: peft right before ours
        if state["round"] % 2 == 0:
            time_peft()

    def after(*_a, **_k):  # odd rounds: peft right after ours, so neither always goes first
        if state["round"] % 2 == 1:
            time_peft()
        state["round"] += 1

    fn(ours, ids)  # warm-up both
    time_peft()
    peft_times.clear()
    benchmark.group = mode
    benchmark.pedantic(fn, args=(ours, ids), setup=before, teardown=after, rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update(name=name, mode=mode)
    if peft_times:
        peft_median = statistics.median(peft_times)
        benchmark.extra_info.update(peft_median=peft_median, ratio_vs_peft=benchmark.stats.stats.median / peft_median)
