"""Worker processes for a parallel audit: how they start, how they run the units, how Ctrl-C stops them.

Generic: the audit's own unit of work (a card on one model) is the caller's function; this module knows
processes, not cards.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import torch


def start_method(device: str) -> str:
    """How worker processes start. fork where there is one: workers start with torch, transformers and
    peft already imported (the parent holds no torch threads: single_threaded() ran first). spawn
    elsewhere, and whenever the run uses CUDA or this process has initialised it: a forked child cannot
    use the CUDA state its parent set up ("CUDA error: initialization error"), and asking whether CUDA
    is available (--device cuda's check) already initialises the driver."""
    import multiprocessing
    if "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    if device != "cpu" or torch.cuda.is_initialized():
        return "spawn"
    return "fork"


def init_worker() -> None:
    """Worker process setup: one torch thread, the audit's warning filters, and Ctrl-C left to the parent
    (which terminates the workers), so an interrupted parallel run prints no worker tracebacks."""
    import signal

    from .noise import quiet_known_warnings
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    quiet_known_warnings()


def _terminate_children(pool) -> None:
    """Terminate the pool's workers and every other child process of this one (an executor can start a
    replacement worker while it shuts down: left alone, it would outlive the interrupted run)."""
    import multiprocessing
    procs = {*(getattr(pool, "_processes", None) or {}).values(), *multiprocessing.active_children()}
    for proc in procs:
        try:
            proc.terminate()
        except Exception:  # noqa: BLE001 - already gone
            pass


def run_units(units: list[Hashable], work: Callable, args_of: Callable[[Hashable], tuple], jobs: int, method: str,
              on_done: Callable[[Hashable, Any], None] | None = None) -> dict:
    """{unit: work(*args_of(unit))} computed in ``jobs`` processes started with ``method``, units submitted
    in the given order; ``on_done(unit, result)`` as each finishes. On KeyboardInterrupt the pending
    futures are cancelled, the workers terminated at once (not waited for) and the interrupt re-raised."""
    import multiprocessing
    import signal
    import threading
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: dict = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method),
                               initializer=init_worker)
    try:
        # The first submit() starts the workers; an ignored SIGINT is inherited, so they never see a
        # Ctrl-C even before their initializer runs. The parent ignores it only while it starts them: the
        # other submits (pickling each unit) run with Ctrl-C live, so none is lost.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            futures = {pool.submit(work, *args_of(units[0])): units[0]}
        finally:
            if main and previous is not None:
                signal.signal(signal.SIGINT, previous)
        futures.update({pool.submit(work, *args_of(u)): u for u in units[1:]})
        for fut in as_completed(futures):
            unit = futures[fut]
            results[unit] = fut.result()
            if on_done:
                on_done(unit, results[unit])
    except BaseException:
        _terminate_children(pool)
        pool.shutdown(wait=False, cancel_futures=True)
        _terminate_children(pool)  # and any worker the executor started while it was shutting down
        raise
    pool.shutdown(wait=True)
    return results
