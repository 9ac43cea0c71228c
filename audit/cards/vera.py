"""Card: VeRA (Kopiczko, Blankevoort, Asano, arXiv 2310.11454)."""
import torch

from ..cards import frozen_under_a_step, SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, VariantCard, ZeroGrad


def _shared(p) -> float:
    """max |difference| between this layer's A (B) and every other layer's, over their overlapping
    block: VeRA's A, B are one pair shared by all layers (§3.1), so every block must agree bit for bit."""
    worst = 0.0
    mine = p.adapted.tensors(p.name)
    for other in p.adapted.names:
        if other == p.name:
            continue
        theirs = p.adapted.tensors(other)
        for k in ("A", "B"):
            a, b = mine[k].detach(), theirs[k].detach()
            rows, cols = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
            diff = (a[:rows, :cols].to(torch.float64) - b[:rows, :cols].to(torch.float64)).abs()
            worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def _frozen(p) -> float:
    """How many of A, B are trainable or move under one SGD step (lr 0.1) on every trainable tensor
    of the model, the loss being this layer's output: the pair is frozen (§3.1), never trained."""
    return frozen_under_a_step(p, ("A", "B"))


CARD = VariantCard(
    name="vera",
    paper="VeRA: Vector-based Random Matrix Adaptation (Kopiczko, Blankevoort, Asano, ICLR 2024), §3.1 eq. 1",
    arxiv="2310.11454",
    equation="h = W₀x + Λ_b B Λ_d A x;  A, B frozen random, shared by all layers;  λ_b = 0, λ_d = d_initial at init",
    config={"r": 8, "d_initial": 0.1},
    references=("paper", "peft"),
    identity="exact",
    zero_grads={"lambda_d": ZeroGrad("λ_b = 0 at init, so ∂L/∂λ_d = diag(A_s x)·B_sᵀ diag(λ_b)(∂L/∂h) = 0; "
                                     "λ_b receives the signal first")},
    trainable_per_layer=lambda d_in, d_out, c: d_out + c["r_layer"],
    invariants=(Invariant("projection_shared_max_abs", "A and B are one pair shared by every adapted layer: "
                          "each layer's blocks equal every other layer's on their overlap", _shared, {"*": 0.0}),
                # last: it takes an optimiser step on the live model
                Invariant("projection_trainable_or_moved", "A and B are frozen: not trainable, and unchanged by an "
                          "optimiser step on every trainable tensor", _frozen, {"*": 0.0})),
    placement_source="all projections (the paper adapts query/value on GLUE and every linear layer but the head on "
                     "instruction tuning, §4)",
    bad_inputs=(BadInput({"d_initial": 0.0}, ValueError), BadInput({"d_initial": float("inf")}, ValueError)),
    # λ_b and λ_d moved well away from the init (λ_b = 0 makes ΔW = 0 and leaves λ_d dead)
    perturb={"lambda_b": 0.5, "lambda_d": 0.5},
    config_id="r8",
    config_why="r = 8 below every width, λ_d starting at peft's d_initial = 0.1",
    configs=(ConfigCase("d_initial-1", {"d_initial": 1.0}, "another d_initial: λ_d = 1 at init (the init claims "
                        "and λ_b's first gradient depend on it)"),
             ConfigCase("r-exceeds-d", {"r": 128}, "r = 128 above every layer width (VeRA's rank costs no trainable "
                        "parameters beyond λ_d, so the paper uses ranks near or above the hidden size)"),
             SUBJECT_DEFAULTS),
    deviations=(
        Deviation("peft-vera-bf16-rounded-init", "init", "lambda_d_minus_d_initial", "peft", "xfail",
                  "over a bf16 base with float32 adapters peft rounds λ_d (and A, B) to bf16 before upcasting them: "
                  "update_layer sets λ_d = d_initial, then _move_adapter_to_device_of_base_layer casts it to the "
                  "base dtype, and cast_adapter_dtype upcasts it: λ_d = bf16(0.1) = 0.10009765625, 9.77e-5 from "
                  "float32(0.1) (measured)",
                  "peft/tuners/vera/layer.py:129-132; peft/tuners/tuners_utils.py:2168-2212 (_move_adapter_to_device_of_base_layer: "
                  "cast to the base dtype), :2705 (cast_adapter_dtype: upcast to float32)",
                  magnitude=1e-4, dtypes=("bfloat16",), subjects=("peft",),
                  configs=("r8",)),
    ),
    notes="The shared pair is peft's: one (r, D_in)/(D_out, r) pair sized by the largest adapted layer, each layer "
          "using its leading block, drawn from torch.Generator().manual_seed(seed), A then B.",
)
