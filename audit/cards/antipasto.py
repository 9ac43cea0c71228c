"""Card: AntiPaSTO (M. J. Clark, arXiv 2601.07473), torch hook formulation; external reference antipasto3."""
import math

import torch

from ..cards import BadInput, ConfigCase, Deviation, Invariant, VariantCard, ZeroGrad


def _rotation(p) -> torch.Tensor:
    """R_bd recovered from our hooked layer: Uᵀ(W_eff − W_res)Vhᵀ = diag(S+δ) R  (V basis)."""
    w_eff, _ = p.effective
    core = p.state["U"].t() @ (w_eff - p.weight) @ p.state["Vh"].t()
    sd = p.state["S"] + p.state["delta"]
    if p.cfg["rotate_basis"] == "U":
        return (core / sd[None, :]).t()
    return core / sd[:, None]


def _orthogonality(p) -> float:
    r = _rotation(p)
    return float((r.t() @ r - torch.eye(r.shape[0], dtype=r.dtype)).abs().max())


def _angle(p) -> float:
    """Largest eigen-angle of the block rotation our layer applies, minus the configured bound."""
    r, bs = _rotation(p), p.cfg["block_size"]
    blocks = torch.stack([r[i:i + bs, i:i + bs] for i in range(0, r.shape[0], bs)])
    ang = torch.angle(torch.linalg.eigvals(blocks)).abs().max()
    return float(ang) - p.cfg["max_rotation_angle"]


CARD = VariantCard(
    name="antipasto",
    paper="AntiPaSTO: Self-Supervised Steering of Moral Reasoning (M. J. Clark, 2026)",
    arxiv="2601.07473",
    equation="W_eff = W_res + U diag(S + δ) R_bd Vh,  R_i = (I − A/2)⁻¹(I + A/2),  A = a·tanh(skew(T)/a),  a = 2 tan(θ_max/2)",
    config={"r": 8, "block_size": 4, "max_rotation_angle": 0.5, "rotate_basis": "V"},
    references=("paper", "antipasto3"),
    identity="offset",
    offset_tensors=("delta",),
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] + (c["r_layer"] // c["block_size"]) * c["block_size"] * (c["block_size"] - 1) // 2,
    invariants=(
        Invariant("rotation_orthogonality_err", "the rotation our layer applies is orthogonal",
                  _orthogonality, {"float32": 1e-4, "bfloat16": 1e-1}),
        Invariant("rotation_angle_excess", "every block's rotation angle ≤ max_rotation_angle (tanh saturation)",
                  _angle, {"*": 1e-6}),
    ),
    perturb={"T": 1.5},
    config_id="rotate-V",
    config_why="rotation on the input side (rotate_basis V), block size 4",
    configs=(ConfigCase("rotate-U", {"rotate_basis": "U"}, "rotation on the output side (rotate_basis U)"),
             ConfigCase("no-rotation", {"rotate_basis": "none"}, "no rotation: only S + δ is learned",
                        zero_grads={"T": ZeroGrad("rotate_basis none: T does not enter the forward", stays_zero=True)}),
             ConfigCase("block2", {"block_size": 2}, "2×2 blocks: the tanh bound on the skew entry bounds the "
                        "rotation angle exactly")),
    bad_inputs=(BadInput({"r": 6}, ValueError),
                BadInput({"r": 68}, ValueError),
                BadInput({"rotate_basis": "W"}, ValueError)),
    deviations=(
        Deviation("antipasto-delta-offset", "identity_at_init", "logits_rel_err|layer_max_rel_err", "paper",
                  "tolerance", "δ is initialised to 4e-4 + 4e-4·N(0,1) on purpose (breaks sign symmetry), so the "
                  "init adds U diag(δ) Vh: identity holds only to about δ/S relative",
                  "arXiv 2601.07473; VARIANTS.md §9(c)", tolerance=2e-2),
        Deviation("antipasto-angle-bound-bs4", "properties", "rotation_angle_excess", "paper", "xfail",
                  "the elementwise tanh bounds each skew entry, which bounds the rotation angle exactly only for "
                  "block_size 2; with block_size 4 and large T the angle exceeds max_rotation_angle",
                  "VARIANTS.md §9 pitfalls (measured 1.1 rad at bs=4, θ_max=0.5)",
                  # Gershgorin: the skew generator's entries are ≤ a = 2·tan(θ_max/2), so its eigenvalues
                  # are ≤ (bs−1)·a and the Cayley angle ≤ 2·atan((bs−1)·tan(θ_max/2)) = 1.308 at bs 4, θ_max 0.5
                  magnitude=2 * math.atan(3 * math.tan(0.25)) - 0.5, configs=("rotate-V", "rotate-U")),
    ),
)
