"""Card: PiSSA (Meng, Wang, Zhang, arXiv 2404.02948)."""

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Invariant, VariantCard


def _reconstruction(p) -> float:
    """max |W_res + s·B A − W| / max |W| on our live tensors at init (W_res is the layer weight).

    bf16 bound 2u: W_res is rounded to bf16 (error ≤ u·|W_res|) and max|W_res| can exceed max|W|."""
    s = p.cfg["alpha"] / p.cfg["r"]
    rebuilt = p.weight + s * (p.state["B"] @ p.state["A"])
    return float((rebuilt - p.original_weight).abs().max() / p.original_weight.abs().max())


CARD = VariantCard(
    name="pissa",
    paper="PiSSA: Principal Singular Values and Singular Vectors Adaptation (Meng, Wang, Zhang, 2024), §3",
    arxiv="2404.02948",
    equation="W = U S Vᵀ;  A = diag(√(S_r/s)) V_rᵀ,  B = U_r diag(√(S_r/s)),  W_res = W − s·BA;  y = x(W_res + s·BA)ᵀ + b",
    config={"r": 4, "alpha": 4.0},
    references=("paper", "peft"),
    identity="numeric",
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("reconstruction_rel_err", "W_res + s·BA reproduces the original W",
                          _reconstruction, {"float32": 4 * 2.0 ** -24, "bfloat16": 2 * 2.0 ** -8}, at="init"),),
    bad_inputs=(BadInput({"r": 65}, ValueError),
                BadInput({"use_rslora": True}, ValueError)),
    config_id="paper",
    config_why="alpha = r: s = 1, the paper's form (no scale)",
    configs=(ConfigCase("alpha-ne-r", {"alpha": 8.0}, "alpha ≠ r: S_r must be divided by s = alpha/r so that "
                        "s·BA = U_r S_r V_rᵀ (peft's form); forgetting it keeps the forward exact"),
             SUBJECT_DEFAULTS),
    notes="alpha = r makes s = 1, the paper's form; peft divides S_r by s so any alpha keeps s·BA = U_r S_r V_rᵀ.",
)
