"""Probe for issue 16 (not a benchmark the gate reads): how close to the base model can a LoRA hook get?

    PYTHONPATH=benchmarks python benchmarks/probe_floor.py [rounds]   (default 16; the bench's model and env)

Times, side by side in rotating order on the bench model (bench_setup: BENCH_* variables apply), the
base model and these stand-ins attached to every projection the bench adapts, each a Variant whose
forward does one piece of LoRA's work and nothing else:
  touch_y    y *= 1 in place: one pass over the output, the least any output-side adapter costs
  only_h     x Aᵀ computed and dropped: LoRA's read of x (forward only)
  only_upd   y += h Bᵀ with a cached h: the rank-r update of y alone (forward only)
  lora       our LoRA (adapter tensors in the base dtype here, so bfloat16 runs compare like with like)
Medians of the paired ratios over the base are printed (fwd; fwd+bwd for touch_y and lora).

Measured 2026-11-27 on the 2-core dev host (Qwen3 hidden 512, 4 layers, 4 × 128 tokens, float32, one
thread, 16-30 rounds, four runs): fwd touch_y 1.007-1.044, only_h 1.036-1.055, only_upd 1.030-1.072,
lora 1.105-1.119; fwd+bwd touch_y 1.035-1.047, lora 1.178-1.194. Computing x Aᵀ in a forward pre-hook
(x still warm from the op before) instead changed nothing (new/old 1.000 fwd, 0.990 fwd+bwd). The backward needs at least three more passes of
the same kind (g read for s·g B and again for grad_B = gᵀ h, x read for grad_A, grad_x updated), so a
hook made of separate BLAS calls cannot reach fwd+bwd 1.05 on this host whatever its layout: the
rank-r terms would have to be fused into the base GEMM's epilogue (a custom kernel).
"""
from __future__ import annotations

import copy
import statistics
import sys
import time

import torch

import variants
from audit.state import perturb
from bench_setup import DEVICE, _embedding_grad, bench_model, describe, fwd, fwd_bwd, inputs
from variants.lora import Lora


class TouchY(Lora):
    def forward(self, layer, x, y):
        return y.mul_(1.0)


class OnlyH(Lora):
    def forward(self, layer, x, y):
        torch.mm(x.reshape(-1, x.shape[-1]), layer.adapter_A.t())


class OnlyUpdate(Lora):
    def forward(self, layer, x, y):
        tokens = y.numel() // y.shape[-1]
        h = layer.__dict__.get("probe_h")
        if h is None or h.shape[0] != tokens:
            h = layer.__dict__["probe_h"] = torch.randn(tokens, layer.adapter_A.shape[0], dtype=y.dtype, device=y.device)
        y.view(-1, y.shape[-1]).addmm_(h, layer.adapter_B.t())
        return y


def main(rounds: int = 16) -> None:
    if DEVICE != "cpu":  # the timer below is the process's CPU time, which cannot see GPU work
        raise SystemExit(f"BENCH_DEVICE={DEVICE}: this probe times CPU time; run it on the CPU (BENCH_DEVICE=cpu)")
    torch.set_num_threads(1)
    base = bench_model()
    ids = inputs(base)

    def adapted(variant=None):
        m = copy.deepcopy(base)
        variants.attach(m, variants.config("lora", r=8, alpha=16.0, dtype=None), variant=variant)
        perturb(m, 0, {"theta": 0.3, "alpha": 0.1})
        return _embedding_grad(m)
    models = {"base": base, "touch_y": adapted(TouchY), "only_h": adapted(OnlyH),
              "only_upd": adapted(OnlyUpdate), "lora": adapted()}
    plans = {"fwd": (fwd, list(models)), "fwd+bwd": (fwd_bwd, ["base", "touch_y", "lora"])}
    times = {(mode, k): [] for mode, (_, keys) in plans.items() for k in keys}
    for mode, (fn, keys) in plans.items():
        for k in keys:
            fn(models[k], ids)  # warm-up
    for i in range(rounds):
        for mode, (fn, keys) in plans.items():
            order = keys[i % len(keys):] + keys[:i % len(keys)]
            for k in order:
                t0 = time.process_time()
                fn(models[k], ids)
                times[mode, k].append(time.process_time() - t0)
    print(describe().rsplit(",", 1)[0], f"(adapters in the base dtype), {rounds} rounds")
    for mode, (_, keys) in plans.items():
        b = times[mode, "base"]
        cells = [f"{k}/base {statistics.median([o / t for o, t in zip(times[mode, k], b)]):.3f}" for k in keys[1:]]
        print(f"{mode:8s} base {statistics.median(b) * 1e3:.1f} ms; " + ", ".join(cells))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:2]))
