"""Card: DeLoRA (Bini, Girrbach, Akata, arXiv 2503.18225), paper init with a frozen copy."""

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, VariantCard, ZeroGrad, peft_linear_only


def _bound(p) -> float:
    """‖ΔW diag(1/w)‖_F / (2|λ|) − 1 on our hooked layer: each of the trainable and frozen
    normalised terms has norm ≤ |λ| (eq. 6), so their difference is ≤ 2|λ|."""
    w_eff, _ = p.effective
    delta = (w_eff - p.weight) / p.state["w_norm"]
    return float(delta.norm() / (2 * p.state["lam"].abs().squeeze()) - 1)


def _zero_grads(cfg: dict) -> dict[str, ZeroGrad]:
    """λ is dead at step 0 under either init (ΔW = 0, so ∂y/∂λ = ΔW/λ = 0); peft's init (B = 0, no
    frozen copy) also kills A's gradient, which is B-weighted (arXiv 2503.18225 §3.3 is why the paper
    subtracts a frozen copy instead)."""
    lam = ZeroGrad("ΔW = 0 at init (the frozen copy cancels the trainable term, or B = 0), so ∂y/∂λ = ΔW/λ = 0; "
                   "λ comes alive once A, B move")
    if cfg.get("init_style") == "peft":
        return {"lam": lam, "A": ZeroGrad("peft's init has B = 0 and no frozen copy: A's gradient is B-weighted, "
                                          "so it is exactly zero at step 0; B learns first")}
    return {"lam": lam}


CARD = VariantCard(
    name="delora",
    paper="Decoupling Angles and Strength in Low-rank Adaptation (Bini, Girrbach, Akata, ICLR 2025), §3",
    arxiv="2503.18225",
    equation="ΔW = (λ/r)·[B Ξ_AB A − D Ξ_CD C]·diag(‖W_:,j‖),  Ξ = diag(1/(‖b_i‖‖a_i‖)),  C, D frozen copies of A₀, B₀",
    config={"r": 4, "lambda0": 15.0, "init_style": "paper"},
    references=("paper", "peft"),
    identity="exact",
    zero_grads=_zero_grads,
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out) + 1,
    invariants=(Invariant("norm_bound_excess", "‖ΔW diag(1/w)‖_F ≤ 2|λ| (each normalised term ≤ |λ|)",
                          _bound, {"*": 1e-6}),),
    # A, B moved well away from their frozen copies: λ's gradient is the difference of the two
    # terms, so a tiny perturbation would measure cancellation round-off, not the implementation
    perturb={"A": 0.1, "B": 0.1, "lam": 1.0},
    config_id="paper",
    config_why="the paper's init: random A, B with their frozen copy subtracted, λ₀ = 15",
    configs=(ConfigCase("peft-init", {"init_style": "peft"}, "peft's init: B = 0, no frozen copy (A and λ dead at "
                        "step 0 by design)"),
             ConfigCase("lambda1", {"lambda0": 1.0}, "a small λ₀ = 1 (a λ₀ = 0 kills every gradient)"),
             SUBJECT_DEFAULTS),
    peft_config={"init_style": "peft"},
    peft_config_reason="peft has no frozen-copy term: the peft comparison runs DeLoRA with peft's init (B = 0, no C/D); "
                       "peft as the subject cannot run the paper's init at all (its rows there are n/a, saying so)",
    bad_inputs=(BadInput({"r": 100}, ValueError), BadInput({"init_style": "kaiming"}, ValueError)),
    deviations=(
        Deviation("peft-delora-no-frozen-copy", "init", "config_supported", "peft", "xfail",
                  "peft cannot initialise DeLoRA the paper's way: it has no frozen-copy term, only B = 0 (so A and "
                  "λ get no gradient at step 0, as the peft-init config audits); the paper starts from random A, B "
                  "and subtracts their frozen copy, so both learn from the start",
                  "arXiv 2503.18225 §3.3; peft/tuners/delora/layer.py reset_delora_parameters; peft PR #2780",
                  magnitude=0.0, subjects=("peft",), configs=("paper", "lambda1")),
        peft_linear_only("delora", "peft/tuners/delora/model.py DeloraModel._create_new_module (torch.nn.Linear only)"),
    ),
    notes="Norms are clamped at 1e-4 as in peft (the paper divides by the raw norms).",
)
