"""Card: (IA)³ feed-forward scaling on the down-projection input (Liu et al., arXiv 2205.05638)."""
from ..cards import VariantCard

CARD = VariantCard(
    name="ia3_ff",
    paper="Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning (Liu et al., 2022), §3.3",
    arxiv="2205.05638",
    equation="(l_ff ⊙ γ(W₁x)) W₂:  y = (x ⊙ l) Wᵀ + b on the FFN down-projection;  l = 1 at init",
    config={},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=lambda d_in, d_out, c: d_in,
    placement_roles=("down",),
    placement_source="paper §3.3: l_ff scales the FFN hidden activation, the input of the down-projection",
)
