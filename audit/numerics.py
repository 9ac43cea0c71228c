"""Tolerances that follow the numerics: judge a low-precision result against the float64 truth,
allowing a small multiple of the error a *reference* computation makes in the same precision.

Why this shape. A correct implementation in precision p (unit round-off u) differs from the exact
result by roughly cond · u · (a small factor for its reduction order): both the conditioning of the
quantity (DeLoRA's cancelling λ gradient, a chaotic optimiser trajectory) and the rounding order vary
from one computation to the next, so no fixed number fits every seed. The reference's own spread
measures both on the same input: the paper formula (or peft) evaluated in the run's precision, once
as is and once from a start jittered by one unit round-off (that second sample is the error an
equally correct computation with other roundings makes, amplified by the conditioning). A correct
subject has an error of the same order; SPREAD_FACTOR covers the difference between two correct
reduction orders (dot products of length k round to ~√k·u typically, ~k·u at worst, and the
reference's sample can be the lucky one), and the floor u keeps quantities that a low-precision
evaluation happens to get exact from demanding exactness. A bug changes the result by far more
than rounding (a wrong scale, axis or sign: 1e-3 to 1 relative, against 1e-7 to 1e-6 in float32).
"""
from __future__ import annotations

import torch

UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8,
                 torch.float16: 2.0 ** -11}
# Allowed ratio of the subject's error to the reference's spread (see the module docstring); checked
# by the seed sweep (nox -s seeds) and by correct alternative implementations (tests/alternatives/)
SPREAD_FACTOR = 8.0


# A tensor this small (DeLoRA's λ, a gate) gets its gradient from one reduction over the whole layer
# output, Σ_ij t_ij ∂y_ij/∂p, which can cancel heavily (measured: |Σ| = Σ|terms| / 2400 on the zoo).
# Rounding error is then proportional to Σ|terms|, not to |Σ terms|, so its error is judged relative
# to Σ|terms| (computed in float64 by forward-mode derivatives). Larger tensors keep ‖error‖/‖truth‖:
# their norm sums many entries and does not cancel.
SMALL_TENSOR = 8


def term_magnitudes(ref, x, w, b, state: dict, cfg: dict, t: torch.Tensor, names) -> dict[str, torch.Tensor]:
    """{name: S} for the small trainable tensors in ``names``: S_k = Σ_ij |t_ij| |∂y_ij/∂p_k| with
    y = ref.forward(x, w, b, state, cfg) in float64."""
    f64 = {k: v.detach().to(torch.float64) for k, v in state.items()}
    x64, w64 = x.detach().to(torch.float64), w.detach().to(torch.float64)
    b64 = None if b is None else b.detach().to(torch.float64)
    out = {}
    for name in names:
        p = f64[name]
        if p.numel() > SMALL_TENSOR:
            continue

        def f(q, _name=name):
            return ref.forward(x64, w64, b64, {**f64, _name: q}, cfg)
        tangents = torch.eye(p.numel(), dtype=torch.float64).reshape(p.numel(), *p.shape)
        dys = None
        if p.numel() > 1 and _key(ref) not in _NO_BATCHING:
            try:  # every direction in one vectorised pass
                dys = torch.func.vmap(lambda tan: torch.func.jvp(f, (p,), (tan,))[1])(tangents)
            except RuntimeError:  # a formula op without a batching rule (remembered: the attempt costs)
                _NO_BATCHING.add(_key(ref))
        if dys is None:  # one direction at a time, by eager forward-mode AD (4x cheaper than func.jvp here)
            dys = torch.stack([_jvp(f, p, tan) for tan in tangents])
        out[name] = (t.abs() * dys.abs()).reshape(p.numel(), -1).sum(1).reshape(p.shape)
    return out


_NO_BATCHING: set = set()  # formulas whose forward vmap cannot batch


def _key(ref) -> str:
    """A formula's name (a module, or a wrapper around one: its class and the wrapped module's name)."""
    inner = getattr(ref, "ref", None)
    return getattr(ref, "__name__", None) or f"{type(ref).__name__}({getattr(inner, '__name__', '')})"


def _jvp(f, p: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """∂f(p)/∂p · tangent by eager forward-mode AD (torch.func.jvp where an op lacks a forward-AD formula)."""
    import torch.autograd.forward_ad as fwad
    try:
        with fwad.dual_level():
            y, dy = fwad.unpack_dual(f(fwad.make_dual(p, tangent)))
            return torch.zeros_like(y) if dy is None else dy  # None: y does not depend on p
    except (RuntimeError, NotImplementedError):
        return torch.func.jvp(f, (p,), (tangent,))[1]


def rel_err(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """‖a − b‖ / ‖scale‖ (default scale: b, the relative error), in float64; 0 when both are 0."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    num = float(torch.linalg.vector_norm(a - b))  # vector_norm: torch.norm's Python dispatch costs as much
    den = float(torch.linalg.vector_norm(b if scale is None else scale.detach().to(torch.float64)))
    return num / den if den > 0 else num


def unit_roundoff(dtype: torch.dtype) -> float:
    return UNIT_ROUNDOFF[dtype]


def jitter(t: torch.Tensor | None, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor | None:
    """``t`` moved by one unit round-off of ``dtype`` in a seeded random direction, per entry."""
    if t is None:
        return None
    if not t.is_floating_point():  # integer state (SHiRA's mask positions): exact, nothing to round
        return t
    noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)
    return (t.detach().to(torch.float64) * (1 + unit_roundoff(dtype) * noise)).to(t.dtype)


def spread_tolerance(spreads: list[float], dtype: torch.dtype) -> float:
    """SPREAD_FACTOR × max(the reference's spreads, u of the run's precision)."""
    return SPREAD_FACTOR * max([*spreads, unit_roundoff(dtype)])


def keep_worst(store: dict, key, entry: tuple) -> None:
    """Keep in ``store[key]`` whichever of its entry and ``entry`` — (error, tolerance, ...) — uses the
    larger share of its tolerance: the worst layer/tensor is the one nearest to failing, not the one
    with the largest raw error (tolerances differ by layer)."""
    if key not in store or entry[0] / entry[1] > store[key][0] / store[key][1]:
        store[key] = entry


def describe(spreads: list[float], dtype: torch.dtype) -> str:
    shown = ", ".join(f"{s:.2e}" for s in spreads)
    return (f"vs float64 truth; tolerance {SPREAD_FACTOR:g} × max(reference spread in "
            f"{str(dtype).removeprefix('torch.')} [{shown}], u = {unit_roundoff(dtype):.2e})")
