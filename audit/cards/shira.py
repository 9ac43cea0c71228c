"""Card: SHiRA (Bhardwaj, Pandey, Priyadarshi, et al., arXiv 2406.13175)."""
import torch

from ..cards import frozen_under_a_step, BadInput, ConfigCase, Invariant, VariantCard, peft_linear_only


def _positions(p) -> tuple[torch.Tensor, torch.Tensor]:
    idx = p.state["indices"].round().long()  # the probe's state is a float64 copy: exact for integers
    return idx[0], idx[1]


def _outside_mask(p) -> float:
    """max |W_eff − W| over the entries OUTSIDE the mask, over max|W| + max|b|: SHiRA changes only the masked
    weights (§3.1, gradient masking ∇W ⊙ M), so everywhere else the subject's effective weight is the base one.
    W_eff is read off the layer as y(I) − y(0): each entry W_ij + b_i is rounded once (the base layer's own
    sum), then b_i is taken off exactly, so a correct subject sits within u·(|W| + |b|): tolerance 2u."""
    w_eff, b_eff = p.effective
    diff = (w_eff - p.original_weight).abs()
    rows, cols = _positions(p)
    inside = (rows >= 0) & (rows < diff.shape[0]) & (cols >= 0) & (cols < diff.shape[1])
    diff[rows[inside], cols[inside]] = 0
    scale = float(p.original_weight.abs().max()) + float(b_eff.abs().max())
    return float(diff.max()) / scale if scale > 0 else float(diff.max())


def _repeated(p) -> float:
    """How many of the K mask positions repeat another: a mask is a set of K distinct weights (§3.1)."""
    rows, cols = _positions(p)
    flat = rows * (int(cols.max()) + 1 if cols.numel() else 1) + cols
    return float(flat.numel() - torch.unique(flat).numel())


def _frozen(p) -> float:
    """How many of the mask's positions are trainable or move under one SGD step (lr 0.1) on every trainable
    tensor of the model, the loss being this layer's output: the mask is fixed for the whole training (§3.1)."""
    return frozen_under_a_step(p, ("indices",))


# unit round-off of the run's dtype, twice (see _outside_mask)
_OUTSIDE_TOL = {"float32": 2 * 2.0 ** -24, "bfloat16": 2 * 2.0 ** -8}

CARD = VariantCard(
    name="shira",
    paper="Sparse High Rank Adapters (Bhardwaj, Pandey, Priyadarshi, Ganapathy, Esteves, Kadambi, Borse, Whatmough, "
          "Garrepalli, Van Baalen, Teague, Nagel, NeurIPS 2024), §3.1-3.2",
    arxiv="2406.13175",
    equation="W_new = W + S,  S supported on a fixed sparse mask M of K = r·(d_in + d_out) weights;  S = 0 at init",
    config={"r": 4},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("update_outside_mask_rel", "the effective weight differs from the base one only at the "
                          "mask's positions", _outside_mask, _OUTSIDE_TOL),
                Invariant("mask_positions_repeated", "the mask's K positions are distinct", _repeated, {"*": 0.0}),
                # last: it takes an optimiser step on the live model
                Invariant("mask_trainable_or_moved", "the mask is fixed: not trainable, and unchanged by an optimiser "
                          "step on every trainable tensor", _frozen, {"*": 0.0})),
    placement_source="all projections (the paper adapts every linear layer of the LLMs it finetunes, §5)",
    bad_inputs=(BadInput({"mask_type": "struct"}, ValueError), BadInput({"r": 64}, ValueError)),
    # values moved well away from S = 0 (every entry of the mask trained)
    perturb={"values": 0.3},
    config_id="r4",
    config_why="K = 4·(d_in + d_out) positions: 8-13 % of each zoo weight (the paper's 1-2 % on 4096-wide layers "
               "is the same r far from the full count)",
    configs=(ConfigCase("seed-7", {"seed": 7}, "another random mask (SHiRA-Rand): the init statements and the "
                        "parities hold for any draw"),
             ConfigCase("dense-mask", {"r": 30}, "r = 30 on the toy MLP's 48×80 layers: K = 30·128 = 3840 = every "
                        "entry, the mask is the whole weight (SHiRA becomes full finetuning; a position lost or "
                        "repeated shows at once)"),
             ConfigCase("defaults", {}, "the subject's own defaults (peft: r = 32): on the tiny Phi-3, whose layers "
                        "all hold r·(d_in + d_out) ≤ d_in·d_out at r = 32 (the other zoo models' 64→32 k/v and 48→80 "
                        "MLP layers are too small for K at r = 32, and both implementations refuse them)",
                        subject_defaults=True, models=("phi3",))),
    deviations=(peft_linear_only("shira", "peft/tuners/shira/model.py ShiraModel._create_new_module (TypeError: "
                                          "only torch.nn.Linear)"),),
    notes="The mask is state: the K positions are stored with the values (peft: shira_indices beside shira_weight), "
          "so a checkpoint reloads the trained positions, never a redrawn mask. The paper's other masks "
          "(SHiRA-Struct, -WM, -Grad, -SNIP) are not audited: peft builds in only the random one. peft re-seeds its "
          "mask generator per layer, so its same-shaped layers share one mask; ours draws each layer's from one "
          "running generator. The paper does not say which; neither changes a layer's function.",
)
