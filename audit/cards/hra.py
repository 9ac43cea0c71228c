"""Card: HRA (Yuan, Liu, Xu, arXiv 2405.17484)."""
import torch

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, VariantCard, peft_linear_only


def _orthogonality(p) -> float:
    """max |MᵀM − I| of our input transform x ↦ x M (a product of reflections is orthogonal)."""
    m = p.input_map
    return float((m.t() @ m - torch.eye(m.shape[0], dtype=m.dtype)).abs().max())


CARD = VariantCard(
    name="hra",
    paper="Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection Adaptation (Yuan, Liu, Xu, 2024), §3",
    arxiv="2405.17484",
    equation="W' = W·H₀H₁⋯H_{r−1},  H_i = I − 2u_iu_iᵀ/‖u_i‖²;  symmetric init u_{2k} = u_{2k+1}",
    config={"r": 4},
    references=("paper", "peft"),
    identity="numeric",
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * d_in,
    invariants=(Invariant("orthogonality_err", "the input transform H_{r−1}⋯H₀ is orthogonal",
                          _orthogonality, {"float32": 8 * 2.0 ** -24 * 64, "bfloat16": 2 * 2.0 ** -8}),),
    bad_inputs=(BadInput({"r": 3}, ValueError), BadInput({"r": 98}, ValueError)),
    perturb={"u": 0.3},
    config_id="r4",
    config_why="two reflection pairs",
    configs=(ConfigCase("r2", {"r": 2}, "one pair of reflections: the smallest rank the symmetric init allows"),
             ConfigCase("gram-schmidt", {"apply_gs": True}, "peft's apply_GS: the vectors orthonormalised first, one "
                        "reflection I − 2QQᵀ through their span; no init can make that the identity, so identity_at_init "
                        "is not asked, and the init must give r independent vectors",
                        checks=("init", "grad_flow", "paper_parity", "peft_parity", "properties", "merge", "save_load")),
             SUBJECT_DEFAULTS),
    deviations=(peft_linear_only("hra", "peft/tuners/hra/model.py HRAModel._create_new_module (torch.nn.Linear and Conv2d only)"),),
)
