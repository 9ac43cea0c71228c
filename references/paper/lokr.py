"""LoKr (low-rank Kronecker product) paper formula (float64), LyCORIS's factor shapes and scale."""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear
from .lora import draw_claims

EQUATION = ("ΔW = γ·(W₁ ⊗ W₂),  W₂ = W₂ₐW₂ᵦ when r < max(out_k, in_n)/2 (W₁ = W₁ₐW₁ᵦ likewise with "
            "decompose_both);  γ = α/r, but γ = 1 when both factors are full;  W_eff = W + ΔW")
CITATION = (
    "Yeh et al., Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation, "
    "arXiv:2309.14859, §3 (LoKr; eq. number and the wording of the scale unverified); factor shapes, the "
    "low-rank rule and γ = 1 for two full factors from the authors' code (KohakuBlueleaf/LyCORIS "
    "lycoris/modules/lokr.py: 'if self.use_w2 and self.use_w1: alpha = lora_dim'), as ported by peft "
    "tuners/lokr/layer.py factorization"
)

INIT_STYLES = ("lycoris", "peft")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n), m ≤ n, m·n = dimension: the divisor pair LyCORIS (and peft) pick.

    factor > 0 dividing dimension: (factor, dimension/factor) as given (not reordered). Otherwise
    the divisors m = 1, 2, ... are walked while m < n, m + n does not grow and m ≤ factor (factor
    −1: no cap), i.e. the pair nearest √dimension (or below the cap).
    """
    dimension, factor = int(dimension), int(factor)
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    cap = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        nm = m + 1
        while dimension % nm:
            nm += 1
        nn = dimension // nm
        if nm + nn > m + n or nm > cap:
            break
        m, n = nm, nn
    return (n, m) if m > n else (m, n)


def factor_shapes(d_in: int, d_out: int, cfg: dict) -> dict:
    """Block geometry and branch: out_l, out_k, in_m, in_n (d_out = out_l·out_k, d_in = in_m·in_n),
    full_w1, full_w2 (LyCORIS: W₂ is low rank iff r < max(out_k, in_n)/2; W₁ only with decompose_both
    and r < max(out_l, in_m)/2)."""
    r, f = int(cfg["r"]), int(cfg.get("decompose_factor", -1))
    in_m, in_n = factorization(d_in, f)
    out_l, out_k = factorization(d_out, f)
    full_w1 = not (bool(cfg.get("decompose_both", False)) and r < max(out_l, in_m) / 2)
    full_w2 = not (r < max(out_k, in_n) / 2)
    return {"out_l": out_l, "out_k": out_k, "in_m": in_m, "in_n": in_n, "full_w1": full_w1, "full_w2": full_w2}


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads (references/STATE_LAYOUT.md), peft's names and shapes:
    w1 (out_l, in_m) or w1_a (out_l, r), w1_b (r, in_m); w2 (out_k, in_n) or w2_a (out_k, r), w2_b (r, in_n)."""
    g, r = factor_shapes(d_in, d_out, cfg), int(cfg["r"])
    out = {"w1": (g["out_l"], g["in_m"])} if g["full_w1"] else {"w1_a": (g["out_l"], r), "w1_b": (r, g["in_m"])}
    out.update({"w2": (g["out_k"], g["in_n"])} if g["full_w2"] else {"w2_a": (g["out_k"], r), "w2_b": (r, g["in_n"])})
    return out


def layout_given(d_in: int, d_out: int, cfg: dict, given: dict[str, tuple]) -> dict[str, tuple] | None:
    """The layout this formula reads for a subject whose tensors have the canonical shapes ``given``,
    when they form a LoKr of this layer under *any* factorisation of its dimensions (which divisor pairs,
    and which side is low rank, are an implementation's rule, not the method's): W₁ (p, s) as w1 or
    w1_a (p, k) w1_b (k, s), W₂ (q, t) likewise, with p·q = d_out and s·t = d_in. None when they do not;
    the caller then holds the subject to ``layout`` (LyCORIS's rule) and reports what differs."""
    def side(name):
        if name in given and f"{name}_a" not in given and f"{name}_b" not in given and len(given[name]) == 2:
            return tuple(given[name])
        a, b = given.get(f"{name}_a"), given.get(f"{name}_b")
        if name not in given and a is not None and b is not None and len(a) == len(b) == 2 and a[1] == b[0]:
            return a[0], b[1]
        return None
    w1, w2 = side("w1"), side("w2")
    known = {"w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b"}
    if w1 is None or w2 is None or set(given) - known or w1[0] * w2[0] != d_out or w1[1] * w2[1] != d_in:
        return None
    return {k: tuple(v) for k, v in given.items()}


def scaling(state: dict, cfg: dict) -> float:
    """γ = α/r; γ = 1 when both factors are full matrices (no rank involved; LyCORIS lokr.py)."""
    r, alpha = int(cfg["r"]), float(cfg["alpha"])
    if r <= 0:
        raise ValueError(f"r must be positive, got {r}")
    return 1.0 if ("w1" in state and "w2" in state) else alpha / r


def factors(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(W₁, W₂) in the compute dtype: the full factor, or the product of its two low-rank halves."""
    w1 = f64(state["w1"]) if "w1" in state else f64(state["w1_a"]) @ f64(state["w1_b"])
    w2 = f64(state["w2"]) if "w2" in state else f64(state["w2_a"]) @ f64(state["w2_b"])
    return w1, w2


KRON_ORDERS = ("w1w2", "w2w1")


def kron_order(cfg: dict) -> str:
    """Which factor is the block grid: "w1w2" (ΔW = W₁ ⊗ W₂, LyCORIS and peft) or "w2w1" (ΔW = W₂ ⊗ W₁,
    the other factor order, an equally valid Kronecker factorisation: an open choice)."""
    order = cfg.get("kron_order", "w1w2")
    if order not in KRON_ORDERS:
        raise ValueError(f"kron_order must be one of {KRON_ORDERS}, got {order!r}")
    return order


def delta(state: dict, cfg: dict) -> torch.Tensor:
    """ΔW = γ·kron(W₁, W₂), kron(W₁, W₂)[i·b + k, j·d + l] = W₁[i, j]·W₂[k, l] (arXiv:2309.14859 §3);
    γ·kron(W₂, W₁) under the other factor order (``kron_order``)."""
    w1, w2 = factors(state)
    left, right = (w1, w2) if kron_order(cfg) == "w1w2" else (w2, w1)
    return scaling(state, cfg) * torch.kron(left, right)


def geometry(state: dict, cfg: dict) -> dict:
    """The block geometry of the ΔW a state gives (read off its factors' shapes, under ``kron_order``):
    out_l × in_m blocks of out_k × in_n entries, as ``rearranged`` and ``kron_residual`` take it."""
    w1, w2 = (t.shape for t in factors({k: v.detach() for k, v in state.items()}))
    grid, block = (w1, w2) if kron_order(cfg) == "w1w2" else (w2, w1)
    return {"out_l": grid[0], "in_m": grid[1], "out_k": block[0], "in_n": block[1]}


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + γ·W₁ ⊗ W₂, b_eff = b (arXiv:2309.14859 §3, eq. number unverified).

    state: see ``layout``. cfg: r, alpha (decompose_both, decompose_factor only shape the state).
    """
    W = f64(W)
    d = delta(state, cfg)
    if d.shape != W.shape:
        raise ValueError(f"the Kronecker product of the factors is {tuple(d.shape)} but W is {tuple(W.shape)}")
    return W + d, f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def rearranged(dw: torch.Tensor, g: dict) -> torch.Tensor:
    """Van Loan–Pitsianis rearrangement of a (out_l·out_k, in_m·in_n) matrix: row (i, j) holds block
    (i, j) flattened, so kron(A, B) maps to vec(A) vec(B)ᵀ, a rank-one matrix."""
    blocks = dw.reshape(g["out_l"], g["out_k"], g["in_m"], g["in_n"]).permute(0, 2, 1, 3)
    return blocks.reshape(g["out_l"] * g["in_m"], g["out_k"] * g["in_n"])


def kron_residual(dw: torch.Tensor, g: dict) -> float:
    """‖R(ΔW) − σ₁u₁v₁ᵀ‖_F = √(Σ_{i≥2} σᵢ²) of the rearranged ΔW: 0 iff ΔW is one Kronecker product
    with these block sizes (the structure LoKr claims, arXiv:2309.14859 §3)."""
    s = torch.linalg.svdvals(rearranged(dw.to(torch.float64), g))
    return float(s[1:].pow(2).sum().sqrt())


# -- init statements (references/paper/_common.py "init statements") ----------------------------------
# cfg["init_style"]: "lycoris" (the authors' code, the default here): W₂ (or W₂ᵦ) = 0, everything else
# kaiming_uniform(a=√5); "peft" (peft init_weights=True): W₁ (or W₁ₐ) = 0, everything else kaiming.
# kaiming_uniform(a=√5) on a (rows, fan_in) tensor is U(±1/√fan_in).

def zero_factor(cfg: dict, state: dict) -> str:
    """The tensor the init style sets to zero (so ΔW = 0 exactly at init)."""
    style = cfg.get("init_style", "lycoris")
    if style not in INIT_STYLES:
        raise ValueError(f"init_style must be one of {INIT_STYLES}, got {style!r}")
    if style == "lycoris":
        return "w2" if "w2" in state else "w2_b"
    return "w1" if "w1" in state else "w1_a"


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """One factor exactly zero (LyCORIS: W₂ or W₂ᵦ; peft: W₁ or W₁ₐ: ``init_style``, an open choice), so
    ΔW = 0 at init; every other tensor drawn U(±1/√fan_in) (kaiming_uniform, a = √5, fan_in = its
    second dimension)."""
    zero = zero_factor(cfg, state)
    style = cfg.get("init_style", "lycoris")
    cite = "LyCORIS lokr.py init" if style == "lycoris" else "peft lokr/layer.py reset_adapter_parameters"
    claims = [InitClaim("zero_factor_max_abs", "exact", f"{cite}: {zero} = 0 exactly (ΔW = 0 at init)",
                        value=float(state[zero].detach().abs().max()))]
    return claims + [c for name in sorted(state) if name != zero
                     for c in draw_claims(f"{name}_draw", state[name], "kaiming_uniform", cite, name)]
