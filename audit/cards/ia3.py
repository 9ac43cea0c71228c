"""Card: (IA)³ output scaling of keys and values (Liu et al., arXiv 2205.05638)."""
from ..cards import Deviation, VariantCard

CARD = VariantCard(
    name="ia3",
    paper="Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning (Liu et al., 2022), §3.3",
    arxiv="2205.05638",
    equation="softmax(Q(l_k ⊙ Kᵀ)/√d)(l_v ⊙ V):  y = (xWᵀ + b) ⊙ l on k and v;  l = 1 at init",
    config={},
    model_overrides={"mlp": {"target_roles": ("up",)}},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=lambda d_in, d_out, c: d_out,
    placement_roles=("k", "v"),
    placement_source="paper §3.3: rescale keys and values (the FFN scaling is variant ia3_ff)",
    deviations=(
        Deviation("peft-ia3-qwen-targets-q", "placement", "peft_default_targets_mismatch", "peft", "xfail",
                  "peft's default IA3 targets for qwen2/qwen3 are q_proj, v_proj (and down_proj), not the paper's k/v",
                  "peft/utils/constants.py TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING",
                  magnitude=2, models=("qwen3", "qwen2")),
    ),
    notes="On the toy MLP (no attention) the audit scales the up-projection output.",
)
