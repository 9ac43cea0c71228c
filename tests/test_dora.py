"""DoRA's row norm ‖W + s·B A‖ computed without the (d_out, d_in) matrix (variants/dora.py: row_norm)."""
from __future__ import annotations

import torch

from variants.dora import row_norm


def _case(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(96, 64, generator=g, dtype=dtype)
    a = torch.randn(4, 64, generator=g, dtype=dtype) * 0.1
    b = torch.randn(96, 4, generator=g, dtype=dtype) * 0.1
    return w, a, b


def test_equals_the_direct_norm_within_rounding():
    """float64: to 1e-14 of the direct formula; float32: within 8 u of the float64 value (the expansion adds
    three rounded terms under one square root, the direct norm sums d_in rounded squares)."""
    for dtype, tol in ((torch.float64, 1e-14), (torch.float32, 8 * 2.0 ** -24)):
        w, a, b = _case(dtype)
        ref = (w.double() + 2.0 * b.double() @ a.double()).norm(dim=1)
        assert float(((row_norm(w, a, b, 2.0).double() - ref) / ref).abs().max()) <= tol


def test_exactly_the_weight_norm_when_b_is_zero_and_finite_on_a_zero_row():
    w, a, b = _case(torch.float32)
    assert torch.equal(row_norm(w, a, torch.zeros_like(b), 2.0), w.norm(dim=1))  # m = ‖W‖ at init: m / n = 1
    w[3] = 0
    n = row_norm(w, a, b, 2.0)
    assert torch.isfinite(n).all()
    assert torch.allclose(n[3], (2.0 * b[3] @ a).norm(), rtol=1e-6)
