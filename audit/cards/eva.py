"""Card: EVA (Paischer et al., arXiv 2410.07170)."""
import torch

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, VariantCard, ZeroGrad


def _orthonormal(p) -> float:
    """max |AAᵀ − I|: the rows of A are orthonormal principal directions at init."""
    a = p.state["A"]
    return float((a @ a.t() - torch.eye(a.shape[0], dtype=a.dtype)).abs().max())


CARD = VariantCard(
    name="eva",
    paper="One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation (Paischer et al., 2024), §3",
    arxiv="2410.07170",
    equation="A_l = top-r_l right singular vectors of the centred layer inputs X_l;  B = 0;  y = xWᵀ + b + s·(xAᵀ)Bᵀ",
    config={"r": 4, "alpha": 8.0},
    references=("paper", "peft"),
    identity="exact",
    needs_calibration=True,
    zero_grads={"A": ZeroGrad("B = 0 at init, so A's gradient is exactly zero (as LoRA)")},
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("A_orthonormality_err", "rows of A are orthonormal principal directions",
                          _orthonormal, {"*": 4 * 2.0 ** -24 * 8}, at="init"),),
    config_id="alpha8-r4",
    config_why="rank r everywhere (rho = 1), alpha ≠ r",
    configs=(ConfigCase("rho2", {"rho": 2.0}, "rank redistribution (rho = 2, peft's default): each layer offers 2r "
                        "components and the globally top r × layers are kept"),
             ConfigCase("alpha-eq-r", {"alpha": 4.0}, "alpha = r: s = 1"),
             SUBJECT_DEFAULTS),
    bad_inputs=(BadInput({"calibration_data": None}, ValueError),
                BadInput({"calibration_data": []}, ValueError),
                BadInput({"rho": 0.5}, ValueError)),
)
