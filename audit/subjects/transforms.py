"""How a subject's stored tensor maps onto a canonical one (references/STATE_LAYOUT.md), both ways.

A driver names a transform in its ``tensor_names``: a string for the plain ones ("identity",
"transpose", "reshape") or an object for the ones with parameters. Each says how to read the canonical
value off the stored tensor, how to write a canonical value into it, and how the stored tensor's
gradient relates to the canonical gradient the paper formula gives: ``grad`` maps the stored tensor's
gradient into canonical space, and ``project`` maps the formula's canonical gradient onto what a stored
tensor of this kind can show (the identity, except where the stored tensor carries more entries than
the canonical one uses, as a full block whose skew part is the state).

    Affine(scale, shift)   canonical = scale · stored + shift   (a library keeping w with l = 1 + w: Affine(1, 1))
    Diagonal()             canonical = the diagonal of a stored (…, n, n) matrix
    SkewPart(factor)       canonical = factor · (stored − storedᵀ) of stored (…, b, b) blocks (0.5: the skew part)
    PackedSkew(factor)     canonical = the strict upper triangle of factor · (stored − storedᵀ), row-major
                           (…, b(b−1)/2): full blocks stored where the canonical state packs each skew block
                           (OFT's Q; factor 1 for LyCORIS, 0.5 for peft < 0.16)
"""
from __future__ import annotations

import torch


class Transform:
    """The identity; subclasses override what differs."""

    name = "identity"

    def read(self, t: torch.Tensor, shape: tuple | None) -> torch.Tensor:
        return t

    def write(self, t: torch.Tensor, value: torch.Tensor) -> None:
        """Write canonical ``value`` into the stored tensor ``t`` (no autograd)."""
        with torch.no_grad():
            t.copy_(self.stored(value, t).reshape(t.shape).to(t.device, t.dtype))

    def stored(self, value: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The stored tensor that reads as ``value``."""
        return value

    def grad(self, g: torch.Tensor, shape: tuple | None) -> torch.Tensor:
        """The canonical gradient from the stored tensor's gradient ``g``."""
        return self.read(g, shape)

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """The formula's canonical gradient as this stored tensor can show it."""
        return g

    def __repr__(self) -> str:
        return self.name


class Transpose(Transform):
    name = "transpose"

    def read(self, t, shape):
        return t.t()

    def stored(self, value, t):
        return value.t()


class Reshape(Transform):
    name = "reshape"

    def read(self, t, shape):
        known = shape is not None and None not in shape
        return t.reshape(shape if known else (-1,))


class Affine(Transform):
    """canonical = scale · stored + shift."""

    name = "affine"

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        if scale == 0:
            raise ValueError("Affine: scale must be non-zero (the stored tensor must determine the canonical one)")
        self.scale, self.shift = float(scale), float(shift)

    def read(self, t, shape):
        return t * self.scale + self.shift

    def stored(self, value, t):
        return (value - self.shift) / self.scale

    def grad(self, g, shape):
        return g / self.scale  # ∂L/∂stored = scale · ∂L/∂canonical

    def __repr__(self):
        return f"affine(scale={self.scale:g}, shift={self.shift:g})"


class Diagonal(Transform):
    """canonical (…, n) = the diagonal of a stored (…, n, n) matrix; off-diagonal entries are left alone."""

    name = "diagonal"

    def read(self, t, shape):
        return torch.diagonal(t, dim1=-2, dim2=-1)

    def write(self, t, value):
        with torch.no_grad():
            torch.diagonal(t, dim1=-2, dim2=-1).copy_(value.to(t.device, t.dtype))


class SkewPart(Transform):
    """canonical (…, b, b) = factor · (stored − storedᵀ): a library storing full blocks and using their skew
    part (factor 0.5) or their difference with the transpose (factor 1)."""

    name = "skew part"

    def __init__(self, factor: float = 0.5):
        self.factor = float(factor)

    def read(self, t, shape):
        return self.factor * (t - t.transpose(-1, -2))

    def stored(self, value, t):
        return value / (2 * self.factor)  # a skew value: factor · (v/2f − (v/2f)ᵀ) = v

    def grad(self, g, shape):
        return g  # ∂L/∂stored = factor · (G − Gᵀ): compared with the formula's G projected the same way

    def project(self, g):
        return self.factor * (g - g.transpose(-1, -2))

    def __repr__(self):
        return f"skew part(factor={self.factor:g})"


class PackedSkew(Transform):
    """LyCORIS's diag-OFT stores full blocks B (n, b, b) and rotates by the Cayley map of Q = B − Bᵀ
    (lycoris/modules/diag_oft.py:120-131); the canonical Q (references/STATE_LAYOUT.md) is the strict upper
    triangle of each Q_i, row-major (n, b(b−1)/2). Written back as B = that triangle (lower part zero), so
    B − Bᵀ is the canonical Q_i. ∂L/∂B = G − Gᵀ (G = ∂L/∂Q_i), whose upper triangle is ∂L/∂q."""

    name = "packed skew"

    def __init__(self, factor: float = 1.0):
        # peft < 0.16 OFT stores full blocks too, rotating by the Cayley map of 0.5·(B − Bᵀ): factor 0.5
        self.factor = factor

    @staticmethod
    def _index(b: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = torch.triu_indices(b, b, 1, device=device)
        return rows, cols

    def read(self, t, shape):
        rows, cols = self._index(t.shape[-1], t.device)
        return self.factor * (t - t.transpose(-1, -2))[..., rows, cols]

    def write(self, t, value):
        rows, cols = self._index(t.shape[-1], t.device)
        with torch.no_grad():
            new = torch.zeros_like(t)
            new[..., rows, cols] = (value / self.factor).to(t.device, t.dtype)
            t.copy_(new)

    def grad(self, g, shape):  # q = f·(B_ij − B_ji): ∂L/∂B_ij = f·∂L/∂q_ij
        rows, cols = self._index(g.shape[-1], g.device)
        return g[..., rows, cols] / self.factor

    def __repr__(self):
        f = "" if self.factor == 1.0 else f"{self.factor:g}·"
        return f"packed skew (strict upper triangle of {f}(B − Bᵀ))"


NAMED = {"identity": Transform(), "transpose": Transpose(), "reshape": Reshape(),
         # peft's BOFT full blocks B, rotating by the Cayley map of −½(B − Bᵀ) (references/peft_bridge/_core.py)
         "negated packed skew (Q = −triu ½(B − Bᵀ))": PackedSkew(-0.5)}


def as_transform(spec) -> Transform:
    """A transform from a driver's spec: one of NAMED's strings or a Transform."""
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str) and spec in NAMED:
        return NAMED[spec]
    raise ValueError(f"unknown transform {spec!r}; allowed: {', '.join(NAMED)} or an audit.subjects.transforms "
                     "object (Affine, Diagonal, SkewPart, PackedSkew)")
