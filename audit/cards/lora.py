"""Card: LoRA (Hu et al., arXiv 2106.09685), scale s = alpha / r."""
from ..cards import CONFIG_CHECKS, SUBJECT_DEFAULTS, ConfigCase, OpenChoice, Option, VariantCard, ZeroGrad

# the paper says "random Gaussian initialization for A" and gives no variance (§4.1); peft, torch's
# nn.Linear default and ours draw kaiming_uniform(a=√5). Both keep ΔW = BA = 0 at init: both conform.
A_DRAW = OpenChoice(
    "A_draw", "the distribution A is drawn from (B = 0 makes ΔW = 0 whatever A is)", "init",
    (Option("gaussian", "Gaussian N(0, σ²), σ free", "LoRA arXiv:2106.09685 §4.1 ('random Gaussian initialization for A')",
            {"init_A": "gaussian"}, ("paper",)),
     Option("kaiming_uniform", "kaiming-uniform U(±1/√d_in)",
            "peft tuners/lora/layer.py reset_lora_parameters (init_lora_weights=True: kaiming_uniform_(a=√5))",
            {"init_A": "kaiming_uniform"}, ("peft", "ours", "lycoris", "torchtune"))))

CARD = VariantCard(
    name="lora",
    paper="LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., 2021), §4.1 eq. 3",
    arxiv="2106.09685",
    equation="h = W₀x + ΔWx = W₀x + s·BAx,  s = α/r;  B = 0 at init",
    config={"r": 4, "alpha": 8.0},
    references=("paper", "peft"),
    identity="exact",
    zero_grads={"A": ZeroGrad("B = 0 at init, so ∂L/∂A = s·Bᵀ(∂L/∂h)xᵀ = 0; B receives the signal first")},
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out) + (d_out if c.get("lora_bias") else 0),
    choices=(A_DRAW,),
    config_id="alpha8-r4",
    config_why="alpha ≠ r: s = alpha/r = 2, so a missing or wrong division shows",
    configs=(ConfigCase("alpha-eq-r", {"alpha": 4.0}, "alpha = r: s = 1, the paper's setting (§4.1: α is set to the first r tried)"),
             ConfigCase("rslora", {"use_rslora": True}, "rsLoRA on: s = alpha/√r (Kalajdzievski, arXiv 2312.03732)"),
             ConfigCase("lora-bias", {"lora_bias": True}, "peft's lora_bias: a trainable bias b_B on B, scaled with "
                        "the product (y = xWᵀ + b + s·(xAᵀBᵀ + b_B)) and merged into the base bias",
                        checks=CONFIG_CHECKS + ("merge", "save_load")),
             SUBJECT_DEFAULTS),
)
