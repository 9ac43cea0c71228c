"""timing: forward and forward+backward medians of base, the subject and its reference implementation
(peft for ours, ours for peft), side by side in one process.

Measured on the cell's model with a larger batch (CPU time of this single-threaded process on CPU), interleaving the three models each round so
machine noise hits them alike. Reported, and gated only loosely (ours/peft fwd+bwd ≤ the card's
bound, default 10×: a gross regression on a shared, noisy machine, not a benchmark; `nox -s bench` is the benchmark).
fwd+bwd is the same for all three: a forward, then the backward of a scalar loss down to the input
embedding (the only base tensor given a gradient), so the base's backward is defined and every
contender runs the same backward through the whole network.
Peak memory of one forward+backward (tensor bytes above the start; torch.profiler memory events on
CPU, torch.cuda.max_memory_allocated on CUDA) is reported for each contender, not gated.
"""
from __future__ import annotations

import statistics
import time

import torch

from references.peft_bridge import BridgeUnsupported

from .. import models
from ..cell import Cell, NotApplicable
from ..measure import peak_memory_bytes, sync
from ..twins import reference_name, twin

ROUNDS, BATCH, SEQ = 4, 4, 32
TIMED_ZOO_MODEL = "qwen3"  # --model-path checkpoints are timed too


def _time(fn, device) -> float:
    """Seconds ``fn`` takes: this process's CPU time on CPU (the audit's workers are single-threaded,
    so time the machine gives to other processes is not counted), wall time around a sync on CUDA."""
    clock = time.perf_counter if torch.device(device).type == "cuda" else time.process_time
    sync(device)
    t0 = clock()
    fn()
    sync(device)
    return clock() - t0


def run(cell: Cell) -> None:
    if cell.model_name in models.ZOO and cell.model_name != TIMED_ZOO_MODEL:
        raise NotApplicable(f"timed on one zoo model ({TIMED_ZOO_MODEL}): the tiny models are overhead-bound, so "
                            "more of them repeat the same measurement (nox -s bench is the benchmark)")
    if cell.device == "cpu" and cell.dtype_name != "float32":
        raise NotApplicable("timed in float32 only on CPU: CPU bf16/fp16 kernels say nothing about a speed "
                            "claim (BENCH_DEVICE=cuda BENCH_DTYPE=bfloat16 nox -s bench times bf16)")
    base = cell.fresh_model()
    ids = models.example_inputs(base, batch=BATCH, seq=SEQ, seed=cell.seed + 5).to(cell.device)
    other = reference_name(cell)
    over = (cell.card.peft_config or {}) if other == "peft" else {}
    with cell.shared(perturbed=True, **over) as adapted:
        _run(cell, base, ids, adapted, other)


def _run(cell: Cell, base, ids, adapted, other: str | None) -> None:
    me = cell.subject.kind if cell.subject.kind != other else "subject"
    contenders = {"base": base, me: adapted.model}
    if other is not None:
        try:
            contenders[other] = twin(cell, adapted).model
        except BridgeUnsupported:  # the other cannot hold this subject's state: timed against the base alone
            other = None
    base.requires_grad_(False)  # frozen as under an adapter
    for m in contenders.values():  # one backward for all three: down to the input embedding
        m.get_input_embeddings().weight.requires_grad_(True)

    def fwd(m):
        with torch.no_grad():
            models.logits(m, ids)

    def fwd_bwd(m):
        models.logits(m, ids).float().square().mean().backward()
        m.zero_grad(set_to_none=True)

    times = {k: {"fwd": [], "fwd_bwd": []} for k in contenders}
    for _ in range(ROUNDS):
        for name, m in contenders.items():
            times[name]["fwd"].append(_time(lambda: fwd(m), cell.device))
            times[name]["fwd_bwd"].append(_time(lambda: fwd_bwd(m), cell.device))
    med = {k: {kind: statistics.median(v[1:]) for kind, v in d.items()} for k, d in times.items()}
    for name in contenders:
        for kind in ("fwd", "fwd_bwd"):
            cell.row(f"{kind}_median_ms[{name}]", med[name][kind] * 1e3, None, status="pass",
                     message=f"median of {ROUNDS - 1} rounds (first dropped), batch {BATCH}×{SEQ}")
    bound = cell.tol("timing", {"*": 10.0})
    for kind in ("fwd", "fwd_bwd"):
        cell.row(f"{kind}_ratio_vs_base", med[me][kind] / med["base"][kind], None, status="pass",
                 message=f"{me} ({cell.subject.describe()}) / base model (reported, not gated)")
        if other is not None:
            cell.row(f"{kind}_ratio_vs_{other}", med[me][kind] / med[other][kind], bound, reference=other,
                     message=f"{me} / {other}; gated loosely at {bound}× (a gross regression)")
    for name, m in contenders.items():
        cell.row(f"fwd_bwd_peak_mem_mb[{name}]", peak_memory_bytes(lambda: fwd_bwd(m), cell.device) / 2**20, None,
                 status="pass", message="tensor memory above the start, one forward+backward (reported, not gated)")
