"""Card: RoAd (Liao & Monz, arXiv 2409.00119), road_1."""
from ..cards import BadInput, ConfigCase, VariantCard, ZeroGrad, peft_linear_only

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
    config_id="road_1",
    config_why="road_1: one angle and one scale per output pair (the paper's main setting)",
    configs=(ConfigCase("road_2", {"road_variant": "road_2"}, "road_2: an angle and a scale per output"),
             ConfigCase("road_4", {"road_variant": "road_4"},
                        "road_4: separate cos and sin angles and scales per output",
                        zero_grads={
                            "theta": ZeroGrad("the cos-part angle θ₁ enters as cos θ₁, stationary at θ = 0: its "
                                              "gradient is zero at init and stays zero", fraction=0.5, stays_zero=True),
                            "alpha": ZeroGrad("the sin-part scale α₂ enters as α₂ sin θ₂ = 0 at θ = 0; it comes alive "
                                              "once θ₂ moves", fraction=0.5)})),
    notes="Pairing j ↔ j + g/2 is peft's (the paper pairs neighbours); the bias is rotated too.",
    deviations=(peft_linear_only("road", "peft/tuners/road/layer.py dispatch_default (torch.nn.Linear only)"),),
)
