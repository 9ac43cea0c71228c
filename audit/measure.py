"""Measurement helpers shared by the timing check and the benchmarks: peak memory and median CIs."""
from __future__ import annotations

import itertools
import math
import os
from typing import Callable, Sequence

import torch

# kineto prints a line to stderr at every profiler start/stop unless told otherwise (read lazily,
# at the first profile); a user's own setting wins
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a host timer measures the work itself (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_memory_bytes(fn: Callable[[], object], device: str | torch.device) -> int:
    """Peak tensor memory that ``fn`` allocates above what was allocated when it started.

    CUDA: torch.cuda.max_memory_allocated (reset before the call). CPU: torch's allocator reports
    every allocation and free to the profiler (``profile_memory``); the peak is the largest running
    sum of those events in time order. Both count tensors only, not BLAS or other native scratch.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        start = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - start
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    return max(itertools.accumulate((n for _, n in events), initial=0))


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: order statistics x_(k), x_(n+1-k) with
    the largest k such that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. Needs n >= 6 for 95%."""
    xs, n = sorted(values), len(values)
    tail, cum, k = (1 - confidence) / 2, 0.0, 0
    while k < n and cum + math.comb(n, k) / 2 ** n <= tail:
        cum += math.comb(n, k) / 2 ** n
        k += 1
    if k == 0:
        raise ValueError(f"{n} values are too few for a {confidence:.0%} interval of the median")
    return xs[k - 1], xs[n - k]
