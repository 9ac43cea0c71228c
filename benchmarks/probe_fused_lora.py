"""Probe for issue 16 (not a benchmark the gate reads): one projection, one thread, the candidate LoRA routes.

    python benchmarks/probe_fused_lora.py [d_in d_out tokens r]   (default 512 1536 512 8: an MLP up-projection)

Routes, forward and forward+backward (x requires grad; W frozen; A, B trainable):
  base      y = x Wᵀ                                        (the floor)
  hook      y = x Wᵀ, then y += s·(x Aᵀ) Bᵀ in place         (today's output hook: two skinny GEMMs)
  fused     z = x [W; A]ᵀ (one GEMM on a storage holding W and A adjacently, no copy of W),
            y = z[:, :d_out] + s·z[:, d_out:] Bᵀ; backward grad_x = [g, s·g B] [W; A] (one GEMM),
            grad_A = s (g B)ᵀ x, grad_B = gᵀ (s z[:, d_out:])
  fused2    as fused, but grad_x = g W + (s·g B) A (two GEMMs, no (T, d_out + r) copy of g)
  view      as fused, but s·z[:, d_out:] Bᵀ is accumulated into z[:, :d_out] in place and that strided view
            returned (no new (T, d_out) output; a caller that .view()s the output across rows would fail);
            forward only (its A is not the autograd leaf here: a Function like Fused would be needed)

Measured 2026-11-27 on the 2-core dev host (one thread, T = 512, r = 8, medians of 41-61 interleaved rounds):
forward ours/base, 512→1536: hook 1.07-1.11 / fused 1.17-1.23 / view 1.03-1.09 over three runs; 512→512: hook
1.18, fused 1.23-1.36, view 1.13; fwd+bwd 512→1536: hook 1.19-1.21, fused 1.23-1.24, fused2 1.22-1.29. The
host drifts by more than the differences between hook and view, so none of these routes is shown to reach
1.05 here; the one-GEMM route with a new output (fused) was slower than today's hook in every run, and a
contiguous copy of Aᵀ / Bᵀ for the skinny GEMMs did not help at the layer level either.

Also tried in the library and measured at the model level (bench model, paired rounds against the hook
of the time, 12-20 rounds), then dropped: an autograd Function that takes the frozen base's backward
over (the hook's y detached and updated in place; backward grad_x = g W + (s g B) A into one tensor, so
autograd adds no second grad_x) gave fwd+bwd new/old 0.993 in float32 and 1.034 in bfloat16 (float32
adapter); a Function for y += h Bᵀ in place instead of baddbmm_ gave 1.028. Alone, the skinny products'
layouts measure 2x apart in a loop (A·xᵀ against x·Aᵀ, hᵀ·g against gᵀ·h) and equal inside a layer, where
the operands come cold from the base GEMM. What is left is passes over memory: benchmarks/probe_floor.py.
"""
from __future__ import annotations

import statistics
import sys
import time

import torch


class Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, fused, d_out, s, one_gemm_backward):
        z = x @ fused.t()
        h = z[:, d_out:] * s
        y = torch.addmm(z[:, :d_out], h, b.t())
        ctx.save_for_backward(x, h, b, fused)
        ctx.d_out, ctx.s, ctx.one = d_out, s, one_gemm_backward
        return y

    @staticmethod
    def backward(ctx, g):
        x, h, b, fused = ctx.saved_tensors
        d_out, s = ctx.d_out, ctx.s
        gb = (g @ b) * s                      # (T, r)
        if ctx.one:
            grad_x = torch.cat([g, gb], dim=1) @ fused
        else:
            grad_x = torch.addmm(g @ fused[:d_out], gb, fused[d_out:])
        grad_a = gb.t() @ x
        grad_b = g.t() @ h
        return grad_x, grad_a, grad_b, None, None, None, None


def main(d_in=512, d_out=1536, tokens=512, r=8, rounds=41):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    s = 2.0
    storage = torch.randn(d_out + r, d_in) / d_in ** 0.5
    w = storage[:d_out]
    a = torch.nn.Parameter(storage[d_out:])  # a leaf sharing the storage
    b = torch.nn.Parameter(torch.randn(d_out, r) * 0.01)
    x0 = torch.randn(tokens, d_in)

    def base(x):
        return x @ w.t()

    def hook(x):
        y = x @ w.t()
        return y.addmm_((x @ a.t()) * s, b.t())

    def fused(x):
        return Fused.apply(x, a, b, storage, d_out, s, True)

    def fused2(x):
        return Fused.apply(x, a, b, storage, d_out, s, False)

    def view(x):
        z = x @ storage.t()
        return z[:, :d_out].addmm_(z[:, d_out:] * s, b.t())

    routes = {"base": base, "hook": hook, "fused": fused, "fused2": fused2, "view": view}
    ref = None
    for name, f in routes.items():  # correctness against the hook route
        x = x0.clone().requires_grad_(True)
        a.grad = b.grad = None
        y = f(x)
        y.square().sum().backward()
        got = (y.detach(), x.grad, a.grad, b.grad)
        if name == "hook":
            ref = got
        elif name != "base" and ref is not None:
            errs = [float((p - q).norm() / q.norm()) for p, q in zip(got, ref) if q is not None and p is not None]
            print(f"{name:7s} rel err vs hook: " + ", ".join(f"{e:.1e}" for e in errs))
    times = {(n, k): [] for n in routes for k in ("fwd", "fwd+bwd")}
    for _ in range(rounds):
        for name, f in routes.items():
            with torch.no_grad():
                t = time.process_time()
                f(x0)
                times[name, "fwd"].append(time.process_time() - t)
            if name == "view":
                continue
            x = x0.clone().requires_grad_(True)
            t = time.process_time()
            f(x).sum().backward()
            times[name, "fwd+bwd"].append(time.process_time() - t)
    for kind in ("fwd", "fwd+bwd"):
        b0 = statistics.median(times["base", kind])
        line = ", ".join(f"{n} {statistics.median(times[n, kind]) * 1e3:.2f} ms ({statistics.median(times[n, kind]) / b0:.3f})"
                         for n in routes if times[n, kind])
        print(f"{kind:8s} {line}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:5]))
