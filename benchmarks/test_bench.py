"""pytest-benchmark: forward and forward+backward of the base model, each variant (ours) and its peft twin.

Side by side in one process: pytest-benchmark times ours, and every round also times the base and
peft with the same timer, in an order that rotates round by round (each contender goes first,
middle and last equally often), so machine noise hits all three alike. Each round gives a paired
ratio ours/peft (and ours/base); extra_info keeps their medians with a distribution-free 95%
interval of the median, the peft and base medians, and the peak memory of one forward+backward.
`nox -s bench` prints the table (benchmarks/table.py).
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

import variants
from audit.measure import median_ci, peak_memory_bytes
from bench_setup import DEVICE, ROUNDS, bench_model, contenders, describe, fwd, fwd_bwd, inputs

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
    return bench_model()


@pytest.fixture(scope="module")
def ids(base):
    return inputs(base)


def _timer(benchmark):
    timer = benchmark._timer  # the timer pytest-benchmark times ours with (--benchmark-timer)
    if DEVICE != "cpu" and timer.__name__ in ("process_time", "thread_time"):
        pytest.fail(f"BENCH_DEVICE={DEVICE}: a CPU-time timer ({timer.__name__}) cannot see GPU work; "
                    "pass --benchmark-timer=time.perf_counter")
    return timer


@pytest.mark.parametrize("mode", list(MODES))
def test_base(benchmark, base, ids, mode):
    _timer(benchmark)
    benchmark.group = mode
    benchmark.extra_info.update(name="base", mode=mode, config=describe())
    MODES[mode](base, ids)
    benchmark.pedantic(MODES[mode], args=(base, ids), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", sorted(variants.REGISTRY))
def test_variant(benchmark, base, ids, name, mode):
    fn, timer = MODES[mode], _timer(benchmark)
    built = contenders(name, base)
    ours, others = built.pop("ours"), {"base": base, **built}
    times: dict[str, list[float]] = {k: [] for k in others}
    order = list(others) + ["ours"]
    state = {"round": 0}

    def run(key):
        t0 = timer()
        fn(others[key], ids)
        times[key].append(timer() - t0)

    def rotation():
        k = state["round"] % len(order)
        return order[k:] + order[:k]

    def before(*_a, **_k):
        rot = rotation()
        for key in rot[:rot.index("ours")]:
            run(key)

    def after(*_a, **_k):
        rot = rotation()
        for key in rot[rot.index("ours") + 1:]:
            run(key)
        state["round"] += 1

    for m in (*others.values(), ours):  # warm-up
        fn(m, ids)
    benchmark.group = mode
    benchmark.pedantic(fn, args=(ours, ids), setup=before, teardown=after, rounds=ROUNDS, iterations=1)
    ours_times = list(benchmark.stats.stats.data)
    assert all(len(ts) == len(ours_times) == ROUNDS for ts in times.values()), "rounds must pair up"
    info = {"name": name, "mode": mode, "config": describe(), "timer": timer.__name__}
    for key, ts in times.items():
        ratios = [o / t for o, t in zip(ours_times, ts)]
        lo, hi = median_ci(ratios)
        info.update({f"{key}_median": statistics.median(ts), f"ratio_vs_{key}": statistics.median(ratios),
                     f"ratio_vs_{key}_ci": [lo, hi]})
    if mode == "fwd_bwd":
        for key, m in {"ours": ours, **others}.items():
            info[f"{key}_peak_mem_bytes"] = peak_memory_bytes(lambda: fn(m, ids), DEVICE)
    benchmark.extra_info.update(info)
