"""Card: RoAd (Liao & Monz, arXiv 2409.00119), road_1."""
from ..cards import BadInput, VariantCard

CARD = VariantCard(
    name="road",
    paper="3-in-1: 2D Rotary Adaptation for Efficient Finetuning, Efficient Batching and Composability (Liao & Monz, 2024), §3",
    arxiv="2409.00119",
    equation="y' = R(xWᵀ + b),  R = ⊕ α·[[cos θ, −sin θ], [sin θ, cos θ]] over pairs (j, j + g/2) of each group of g outputs",
    config={"road_variant": "road_1", "group_size": 8},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=lambda d_in, d_out, c: {"road_1": d_out, "road_2": 2 * d_out, "road_4": 4 * d_out}[c["road_variant"]],
    bad_inputs=(BadInput({"group_size": 7}, ValueError),
                BadInput({"group_size": 12}, ValueError),
                BadInput({"road_variant": "road_3"}, ValueError)),
    perturb={"theta": 0.3, "alpha": 0.1},
    notes="Pairing j ↔ j + g/2 is peft's (the paper pairs neighbours); the bias is rotated too.",
)
