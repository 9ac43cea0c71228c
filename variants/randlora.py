"""RandLoRA, full-rank updates from shared random bases (Albert et al., ICLR 2025, arXiv 2502.00987, §4).

    ΔW = s · Σ_{j=1}^{n} B_j Λ_j A Γ_j,   W_eff = W + ΔW,  bias unchanged,  s = alpha / r

B_j (M × r) and A (r × m) are frozen random bases, m = min(d_in, d_out), M = max(d_in, d_out); Λ_j (r × r)
and Γ_j (m × m) are trainable diagonals; n = ⌈m / r⌉ bases, so Σ_j rank(B_j Λ_j A Γ_j) = n·r ≥ m: the update
can be of full rank. The trainable side is the smaller dimension: when d_in > d_out the product is built
as M × m and transposed (peft's layout, which keeps Γ at m entries per basis).

Canonical state (peft's layout, references/STATE_LAYOUT.md): ``A`` (r, 1, m*) and ``B`` (M*, N, r), ONE frozen
pair shared by every adapted layer, m*/M* = min/max of the largest (d_out, d_in) among them, N = ⌈m*/r⌉; a layer
uses A[:, 0, :m] and B[:M, :n, :]. Per layer: ``lambda`` (r, n) (the diagonals of Λ_j in column j) and ``gamma``
(n, m) (Γ_j in row j). The bases are flattened as peft does: B_flat = B[:M, :n].reshape(M, n·r) and the scaled
A_flat[k·n + j] = λ[k, j]·A[k]⊙γ[j]; so the j-th paper basis B_j is the columns j, j+n, ... of B_flat.

Init: λ = 0 (ΔW = 0 exactly), γ = 1/m (peft's reset_randlora_parameters). The bases are drawn from
torch.Generator().manual_seed(seed) (the projection PRNG key) in float32: dense U(−1, 1), or ternary
{−1, 0, 1} with P(±1) = 1/(2·s) each (``sparse``: s = 3; ``very_sparse``: s = √m*), each divided by its
own standard deviation. Our stream is not peft's (peft draws in bfloat16, B basis by basis): the paper
leaves the draw open and a checkpoint carries the bases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import LAYER_PREFIX, SHARED_PREFIX, PeftFormat, conv1d_targets, peft_type_is
from .lora import add_lowrank


@dataclass(frozen=True)
class RandLoraConfig(AdapterConfig):
    """r: rank of each random basis (n = ⌈min(d_in, d_out)/r⌉ bases per layer: a smaller r means MORE trainable
    parameters); alpha: s = alpha / r (peft's defaults r = 32, alpha = 640); seed: the projection PRNG key;
    sparse / very_sparse: ternary sparse bases (at most one of them)."""

    variant = "randlora"
    r: int = 32
    alpha: float = 640.0
    sparse: bool = False
    very_sparse: bool = False

    def check(self):
        if not math.isfinite(self.alpha) or self.alpha == 0:
            raise self.fail("alpha", f"must be finite and non-zero (s = alpha / r scales ΔW), got {self.alpha}")
        if self.sparse and self.very_sparse:
            raise self.fail("very_sparse", "sparse and very_sparse are two different bases: choose one")


def num_bases(m: int, r: int) -> int:
    """n = ⌈m / r⌉: enough rank-r bases for full rank m (§4)."""
    return -(-m // r)


def draw_bases(r: int, m: int, big: int, key: int, sparsity: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared bases (A (r, 1, m), B (big, ⌈m/r⌉, r)), float32 on CPU from one generator seeded with ``key``,
    A first; dense U(−1, 1) or (``sparsity`` s) ternary with P(−1) = P(1) = 1/(2s); each over its own std."""
    gen = torch.Generator(device="cpu").manual_seed(key)
    shapes = ((r, 1, m), (big, num_bases(m, r), r))
    out = []
    for shape in shapes:
        u = torch.rand(shape, generator=gen)
        if sparsity is None:
            t = u.mul_(2).sub_(1)
        else:
            cut = 1.0 / (2.0 * sparsity)
            t = (u > 1 - cut).float() - (u < cut).float()
        out.append(t / t.std())
    return out[0], out[1]


_BASES = ("randlora_A", "randlora_B")


def _layers(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The adapted modules of a peft RandLoRA file (those holding a λ)."""
    tail = ".randlora_lambda"
    return sorted(k[len(LAYER_PREFIX):-len(tail)] for k in tensors if k.startswith(LAYER_PREFIX) and k.endswith(tail))


def _pack(cfg, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft's save_pretrained writes the shared bases once under base_model. AND once more under every adapted
    layer (its layers hold the model's BufferDict, whose keys its state-dict filter keeps): write the same."""
    out = dict(tensors)
    for mod in _layers(tensors):
        for b in _BASES:
            out[f"{LAYER_PREFIX}{mod}.{b}"] = tensors[SHARED_PREFIX + b].clone()  # safetensors stores no aliases
    return out


def _unpack(pcfg, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the per-layer copies of the bases a peft file holds, after checking each equals the shared one
    (a file whose layers hold other bases has no RandLoRA counterpart: the bases are one pair)."""
    out = dict(tensors)
    for mod in _layers(tensors):
        for b in _BASES:
            key = f"{LAYER_PREFIX}{mod}.{b}"
            if key not in out:
                continue
            copy, shared = out.pop(key), tensors.get(SHARED_PREFIX + b)
            if shared is None or copy.shape != shared.shape or not torch.equal(copy, shared):
                raise ValueError(f"{key}: the layer's copy of the bases differs from the shared {SHARED_PREFIX}{b} "
                                 "(RandLoRA's bases are one pair for every layer)")
    return out


class _ScaledA(torch.autograd.Function):
    """A_flat[k·n + j] = s·λ[k, j]·A[k]⊙γ[j] as an (r·n, m) matrix, saving only (A, λ, γ) for backward (neither
    the (r, n, m) product nor s·λ is kept): ∂λ[k,j] = s·Σ_i G[k,j,i]·A[k,i]·γ[j,i],
    ∂γ[j,i] = s·Σ_k G[k,j,i]·A[k,i]·λ[k,j]."""

    @staticmethod
    def forward(ctx, a, lam, gam, s):
        ctx.save_for_backward(a, lam, gam)
        ctx.s = s
        return (lam[:, :, None] * a[:, None, :]).mul_(gam[None]).mul_(s).flatten(0, 1)

    @staticmethod
    def backward(ctx, grad):
        a, lam, gam = ctx.saved_tensors
        g = grad.view(lam.shape[0], lam.shape[1], -1) * a[:, None, :]
        d_gam = torch.einsum("kji,kj->ji", g, lam).mul_(ctx.s) if ctx.needs_input_grad[2] else None
        d_lam = g.mul_(gam[None]).sum(-1).mul_(ctx.s) if ctx.needs_input_grad[1] else None
        return None, d_lam, d_gam, None


class RandLora(Variant):
    name = "randlora"
    Config = RandLoraConfig
    # peft's RandLoraConfig: the shared bases saved once as base_model.randlora_A / randlora_B (save_projection
    # True; a checkpoint without them would need peft's bfloat16 PRNG stream to regenerate them and is refused)
    peft_format = PeftFormat(
        peft_type="RANDLORA", claims=peft_type_is("RANDLORA"), shared=("A", "B"),
        tensors={"A": "randlora_A", "B": "randlora_B", "lambda": "randlora_lambda", "gamma": "randlora_gamma"},
        to_config=lambda cfg, st: {"r": cfg.r, "randlora_alpha": cfg.alpha, "projection_prng_key": cfg.seed,
                                   "save_projection": True, "sparse": cfg.sparse, "very_sparse": cfg.very_sparse,
                                   "randlora_dropout": 0.0, "init_weights": True, "bias": "none",
                                   "fan_in_fan_out": conv1d_targets(st)},
        from_config=lambda pcfg, shapes: {
            "r": int(pcfg.get("r", 32)), "alpha": float(pcfg.get("randlora_alpha", 640)),
            "seed": int(pcfg.get("projection_prng_key", 0)), "very_sparse": bool(pcfg.get("very_sparse", False)),
            "sparse": bool(pcfg.get("sparse", False)) and not bool(pcfg.get("very_sparse", False))},
        reads=("r", "randlora_alpha", "projection_prng_key", "sparse", "very_sparse"),
        fixed={"save_projection": (True, None), "bias": ("none",)},
        inert=("init_weights",), training_only=("randlora_dropout",), conv1d=None, pack=_pack, unpack=_unpack)

    def __init__(self, cfg):
        super().__init__(cfg)
        self._dims: dict[str, tuple[int, int]] = {}  # every target's (d_in, d_out), seen by check_layer
        self._shared: tuple[torch.Tensor, torch.Tensor] | None = None

    def check_layer(self, name, layer, d_in, d_out, cfg):
        # the runtime validates every target before allocating any tensor: the shared bases are sized by the
        # largest (d_out, d_in) among them (peft: RandLoraModel._find_dim)
        self._dims[name] = (d_in, d_out)

    def _size(self, d_in: int, d_out: int) -> tuple[int, int]:
        """(m*, M*): min and max of the largest (d_in, d_out) over the targets."""
        big_in = max([d_in, *(d[0] for d in self._dims.values())])
        big_out = max([d_out, *(d[1] for d in self._dims.values())])
        return min(big_in, big_out), max(big_in, big_out)

    def param_specs(self, d_in, d_out, r, cfg):
        small, big = self._size(d_in, d_out)
        m = min(d_in, d_out)
        n = num_bases(m, r)
        return {"A": ParamSpec((r, 1, small), trainable=False),
                "B": ParamSpec((big, num_bases(small, r), r), trainable=False),
                "lambda": ParamSpec((r, n)), "gamma": ParamSpec((n, m))}

    def init(self, layer, cfg, gen):
        a, b = layer.adapter_A, layer.adapter_B
        if self._shared is None:  # first layer: draw the bases once, in the adapter dtype and device
            r, small, big = a.shape[0], a.shape[2], b.shape[0]
            sparsity = math.sqrt(small) if cfg.very_sparse else (3.0 if cfg.sparse else None)
            big_a, big_b = draw_bases(r, small, big, cfg.seed, sparsity)
            self._shared = (big_a.to(a.device, a.dtype), big_b.to(b.device, b.dtype))
        layer.register_buffer("adapter_A", self._shared[0], persistent=True)
        layer.register_buffer("adapter_B", self._shared[1], persistent=True)
        gam = layer.adapter_gamma
        layer.adapter_lambda.zero_()
        gam.fill_(1.0 / max(gam.shape))

    def forward(self, layer, x, y):
        lam, gam = layer.adapter_lambda, layer.adapter_gamma
        r, n = lam.shape
        m = gam.shape[1]
        d_in, d_out = x.shape[-1], y.shape[-1]
        big = max(d_in, d_out)
        a = layer.adapter_A[:, 0, :m]
        b_flat = layer.adapter_B[:big, :n, :].reshape(big, n * r)  # a view when the layer uses all of B
        s = self.cfg.alpha / r
        a_flat = _ScaledA.apply(a, lam, gam, s)  # (r·n, m), s applied to it in place
        xx = x.to(a.dtype)
        if d_in <= d_out:  # m = d_in: ΔW = B_flat A_flat (d_out, d_in)
            return add_lowrank(y, xx @ a_flat.t(), b_flat, layer)
        # m = d_out: ΔW = (B_flat A_flat)ᵀ, so ΔW x = A_flatᵀ (B_flatᵀ x). The right factor is trainable here: one
        # 2-D product (no in-place baddbmm, whose batch-expanded factor would get a batch × (d_out, r·n) gradient)
        return add_lowrank(y, xx @ b_flat, a_flat.t())
