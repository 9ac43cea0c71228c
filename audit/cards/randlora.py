"""Card: RandLoRA (Albert, Zhang, Saratchandran, Rodriguez-Opazo, van den Hengel, Abbasnejad, ICLR 2025)."""
import torch

from ..cards import (SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, OpenChoice, Option, VariantCard, ZeroGrad,
                     frozen_under_a_step)


def _shared(p) -> float:
    """max |difference| between this layer's bases A (B) and every other layer's: RandLoRA's bases are one
    frozen pair shared by all layers (§4, as VeRA's), each layer slicing its own block, so they agree bit for bit
    (a shape mismatch counts as inf)."""
    worst = 0.0
    mine = p.adapted.tensors(p.name)
    for other in p.adapted.names:
        if other == p.name:
            continue
        theirs = p.adapted.tensors(other)
        for k in ("A", "B"):
            a, b = mine[k].detach(), theirs[k].detach()
            if a.shape != b.shape:
                return float("inf")
            worst = max(worst, float((a.to(torch.float64) - b.to(torch.float64)).abs().max()))
    return worst


def _frozen(p) -> float:
    """How many of A, B are trainable or move under one SGD step (lr 0.1) on every trainable tensor of the
    model, the loss being this layer's output: the random bases are never trained (§4)."""
    return frozen_under_a_step(p, ("A", "B"))


def _trainable(d_in: int, d_out: int, c: dict) -> int:
    """n·(r + m): λ (r, n) and γ (n, m) per layer, m = min(d_in, d_out), n = ⌈m / r⌉ (§4's parameter count)."""
    m, r = min(d_in, d_out), c["r_layer"]
    n = -(-m // r)
    return n * (r + m)


# ΔW = 0 at init needs one of the two diagonal families at zero; the paper's text (as far as reached here) does not
# say which, the authors' code zeroes the Γ side and starts Λ at 1/max(n, r), peft zeroes Λ and starts Γ at 1/m
ZERO_SIDE = OpenChoice(
    "zero_side", "which trainable diagonal starts at zero (either makes ΔW = 0; the other starts non-zero)", "init",
    (Option("lambda", "λ = 0 (the r-side Λ_j), γ ≠ 0", "peft tuners/randlora/layer.py reset_randlora_parameters "
            "(λ zeros, γ = 1/max(γ.shape))", {"zero_side": "lambda"}, ("peft", "ours")),
     Option("gamma", "γ = 0 (the m-side Γ_j), λ ≠ 0", "PaulAlbert31/RandLoRA vision_language/src/rand_lora.py "
            "LoRALayer.register_param (the m-side zeros, the r-side = 1/max(n, r))", {"zero_side": "gamma"})))

# a column i of a sparse A that is zero in all r rows (probability P(0)^r: (2/3)^8 ≈ 4% for sparse, (1 − 1/√48)^8
# ≈ 29% for very_sparse on the MLP) takes no part in ΔW, so γ[:, i] never gets a gradient, at init or later: a
# property of the method's sparse bases whose share depends on the draw, which grad_flow cannot be told
_SPARSE_DEAD = ("γ's columns over an all-zero column of A never get a gradient (a draw-dependent share), so "
                "grad_flow is not asked")
_NO_GRAD_FLOW = ("identity_at_init", "init", "paper_parity", "peft_parity", "properties")

# a constant on ΔW is absorbed by Λ (every Λ_j is trainable): the update as the paper writes it has none, peft and the
# authors' code each multiply by their own function of alpha and r; any of them computes RandLoRA's update
SCALE = OpenChoice(
    "scale", "the constant s multiplying ΔW (absorbed by the trainable Λ_j: the same family of updates)", "equation",
    (Option("alpha_over_r", "s = alpha / r", "peft tuners/randlora/layer.py update_layer (scaling = randlora_alpha / r)",
            {"scale": "alpha_over_r"}, ("peft", "ours")),
     Option("ten_alpha_over_r", "s = 10·alpha / r", "PaulAlbert31/RandLoRA vision_language/src/rand_lora.py "
            "LoRALayer.__init__ (scaling = lora_alpha / r, times 10 for randlora)", {"scale": "ten_alpha_over_r"}),
     Option("none", "s = 1", "arXiv 2502.00987 §4 (the update Σ_j B_j Λ_j A Γ_j, no scalar)", {"scale": "none"},
            ("paper",))))

CARD = VariantCard(
    name="randlora",
    paper="RandLoRA: Full-rank parameter-efficient fine-tuning of large models (Albert, Zhang, Saratchandran, "
          "Rodriguez-Opazo, van den Hengel, Abbasnejad, ICLR 2025), §4",
    arxiv="2502.00987",
    equation="ΔW = s·Σ_{j=1}^{n} B_j Λ_j A Γ_j,  n = ⌈min(d_in, d_out)/r⌉;  B_j, A frozen random, shared by all "
             "layers;  Λ_j, Γ_j trainable diagonals;  ΔW = 0 at init",
    config={"r": 8, "alpha": 16.0},
    references=("paper", "peft"),
    identity="exact",
    zero_grads={"gamma": ZeroGrad("λ = 0 at init, so ∂L/∂γ_j = Σ_k λ[k, j]·(…) = 0; λ receives the signal first")},
    trainable_per_layer=_trainable,
    choices=(ZERO_SIDE, SCALE),
    invariants=(Invariant("bases_shared_max_abs", "A and B are one pair of bases shared by every adapted layer: each "
                          "layer holds the same whole tensors", _shared, {"*": 0.0}),
                # last: it takes an optimiser step on the live model
                Invariant("bases_trainable_or_moved", "A and B are frozen: not trainable, and unchanged by an "
                          "optimiser step on every trainable tensor", _frozen, {"*": 0.0})),
    placement_source="all projections (the paper adapts every linear layer of the attention and MLP blocks, §5)",
    bad_inputs=(BadInput({"alpha": 0.0}, ValueError), BadInput({"sparse": True, "very_sparse": True}, ValueError)),
    # λ moved off 0 (else ΔW = 0 and γ is dead) and γ spread around its 1/m init: |ΔW| ~ s·√m·0.05·0.02, about the
    # zoo's weight scale (std 0.02)
    perturb={"lambda": 0.05, "gamma": 0.02},
    config_id="r8",
    config_why="r = 8, s = alpha/r = 2: n = m/8 bases per layer (4 to 24 on the zoo), so the pairing of the bases "
               "with Λ_j, Γ_j and the transposed build on d_in > d_out layers are both exercised",
    configs=(ConfigCase("r7", {"r": 7}, "r = 7 divides no zoo width: n = ⌈m/7⌉ bases overshoot m (n·r > m) and the "
                        "last basis is sliced"),
             ConfigCase("r-exceeds-m", {"r": 64, "alpha": 128.0}, "r = 64 above the MLP's m = 48: one basis (n = 1) "
                        "of rank ≥ m"),
             ConfigCase("sparse", {"sparse": True}, "ternary sparse bases, P(±1) = 1/6 each (the paper's sparse "
                        "random bases). " + _SPARSE_DEAD, checks=_NO_GRAD_FLOW),
             ConfigCase("very-sparse", {"very_sparse": True}, "very sparse ternary bases, P(±1) = 1/(2√m*) each. "
                        + _SPARSE_DEAD, checks=_NO_GRAD_FLOW),
             SUBJECT_DEFAULTS),
    notes="The bases are peft's: one (r, 1, m*) A and one (M*, N, r) B for the model, sized by the largest adapted "
          "layer, each layer using A[:, 0, :m] and B[:M, :n, :], flattened as peft does (the paper's B_j is "
          "B_flat[:, j::n]); the product is built M × m on the smaller side and transposed when d_in > d_out. The "
          "dense bases' law is open (ours U(−1, 1), peft kaiming-uniform in bfloat16, both divided by their std).",
)
