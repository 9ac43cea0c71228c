"""Card: HiRA, Hadamard high-rank adaptation (Huang, Ko, Zhuang, Tang, Zhang, ICLR 2025)."""
from ..cards import SUBJECT_DEFAULTS, OpenChoice, Option, VariantCard, ZeroGrad

# B = 0 makes ΔW = W₀ ⊙ BA = 0 whatever A is: the authors' code and peft's default draw A kaiming-uniform, peft's
# init_weights='gaussian' draws it N(0, 1/r²). Both start at the base model: both conform.
A_DRAW = OpenChoice(
    "A_draw", "the distribution A is drawn from (B = 0 makes ΔW = 0 whatever A is)", "init",
    (Option("kaiming_uniform", "kaiming-uniform U(±1/√d_in)",
            "hqsiswiliam/hira hira/tuners/lora.py reset_lora_parameters (init_a='kaiming'); peft tuners/hira/layer.py "
            "reset_hira_parameters (init_weights=True)", {"init_A": "kaiming_uniform"}, ("paper", "peft", "ours")),
     Option("gaussian", "Gaussian N(0, σ²), σ free (peft: σ = 1/r)",
            "peft tuners/hira/layer.py reset_hira_parameters (init_weights='gaussian')", {"init_A": "gaussian"},
            ("peft",))))

CARD = VariantCard(
    name="hira",
    paper="HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large Language Models (Huang, Ko, Zhuang, "
          "Tang, Zhang, ICLR 2025), §4.3 eq. (6)",
    arxiv="openreview:TwJrTz9cRS",
    equation="W_eff = W₀ + W₀ ⊙ (B A) = W₀ ⊙ (1 + B A),  no scale;  B = 0 at init",
    config={"r": 8},
    references=("paper", "peft"),
    identity="exact",
    zero_grads={"A": ZeroGrad("B = 0 at init, so ∂L/∂A = Bᵀ(W₀ ⊙ ∂L/∂ΔW) = 0; B receives the signal first")},
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    choices=(A_DRAW,),
    perturb={"A": 0.3, "B": 0.3},
    config_id="r8",
    config_why="r = 8: B A of rank 8, ΔW = W₀ ⊙ B A of full rank on every zoo layer; the Hadamard product with a "
               "non-square, transposed (Conv1D) W₀ is where a layout bug shows",
    configs=(SUBJECT_DEFAULTS,),
    notes="The Hadamard product is taken with the canonical W₀ (d_out, d_in): on GPT-2's Conv1D the stored weight "
          "is W₀ᵀ (peft: transpose(weight, fan_in_fan_out)). The authors' code carries a scale_ab field (default 1) "
          "that its forward never applies; peft has no scale either.",
)
