"""Card: DeLoRA (Bini, Girrbach, Akata, arXiv 2503.18225), paper init with a frozen copy."""
import torch

from ..cards import BadInput, Deviation, Invariant, VariantCard, ZeroGrad


def _bound(p) -> float:
    """‖ΔW diag(1/w)‖_F / (2|λ|) − 1 on our hooked layer: each of the trainable and frozen
    normalised terms has norm ≤ |λ| (eq. 6), so their difference is ≤ 2|λ|."""
    w_eff, _ = p.effective
    delta = (w_eff - p.weight) / p.state["w_norm"]
    return float(delta.norm() / (2 * p.state["lam"].abs().squeeze()) - 1)


def _peft_default_init(cell) -> None:
    """Audit peft's own DeLoRA init against the paper's: the paper starts from random B (with a
    frozen copy subtracted); peft starts from B = 0. Row: the smallest ‖B‖_F over peft's layers."""
    from peft import DeloraConfig, get_peft_model
    from references.peft_bridge import peft_layer
    from references.peft_bridge._core import exact_target_regex

    names = cell.adapted(**cell.card.peft_config).names
    torch.manual_seed(cell.seed)
    pm = get_peft_model(cell.fresh_model(), DeloraConfig(r=cell.card.config["r"], delora_lambda=int(cell.card.config["lambda0"]),
                                                         target_modules=exact_target_regex(names)))
    with torch.no_grad():
        smallest = min(float(peft_layer(pm, n).delora_B["default"].norm()) for n in names)
    cell.row("peft_init_B_norm_min", smallest, 0.0, op=">", reference="peft", about=cell.about("peft"),
             message="paper init: B random (non-zero) with a frozen copy subtracted; peft's default init")


CARD = VariantCard(
    name="delora",
    paper="Decoupling Angles and Strength in Low-rank Adaptation (Bini, Girrbach, Akata, ICLR 2025), §3",
    arxiv="2503.18225",
    equation="ΔW = (λ/r)·[B Ξ_AB A − D Ξ_CD C]·diag(‖W_:,j‖),  Ξ = diag(1/(‖b_i‖‖a_i‖)),  C, D frozen copies of A₀, B₀",
    config={"r": 4, "lambda0": 15.0, "init_style": "paper"},
    references=("paper", "peft"),
    identity="exact",
    zero_grads={"lam": ZeroGrad("the frozen copy cancels the trainable term at init, so ∂y/∂λ = ΔW/λ = 0; "
                                 "A and B differ from C, D after one step and λ comes alive")},
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out) + 1,
    invariants=(Invariant("norm_bound_excess", "‖ΔW diag(1/w)‖_F ≤ 2|λ| (each normalised term ≤ |λ|)",
                          _bound, {"*": 1e-6}),),
    # A, B moved well away from their frozen copies: λ's gradient is the difference of the two
    # terms, so a tiny perturbation would measure cancellation round-off, not the implementation
    perturb={"A": 0.1, "B": 0.1, "lam": 1.0},
    peft_config={"init_style": "peft"},
    peft_config_reason="peft has no frozen-copy term: the peft comparison runs DeLoRA with peft's init (B = 0, no C/D)",
    peft_extra=_peft_default_init,
    bad_inputs=(BadInput({"r": 100}, ValueError), BadInput({"init_style": "kaiming"}, ValueError)),
    deviations=(
        Deviation("peft-delora-no-frozen-copy", "peft_parity", "peft_init_B_norm_min", "peft", "xfail",
                  "peft initialises B = 0 with no frozen copy; the paper starts from random A, B and subtracts "
                  "their frozen copy, so A and B both learn from step 0 (peft: A and λ get zero gradient)",
                  "arXiv 2503.18225 §3.3; peft/tuners/delora/layer.py reset_delora_parameters; peft PR #2780",
                  magnitude=0.0),
        *(Deviation(f"peft-delora-dead-A-at-init{suffix}", "grad_flow", metric, "peft", "xfail",
                    "with peft's init (B = 0, no frozen copy) ΔW's gradient w.r.t. A is B-weighted, so A gets "
                    "exactly zero gradient at step 0; the paper's init gives A and B live gradients from the start",
                    "arXiv 2503.18225 §3.3; peft/tuners/delora/layer.py reset_delora_parameters",
                    magnitude=magnitude, subjects=("peft",))
          # the worst values covered: a zero gradient norm, every entry of A dead
          for suffix, metric, magnitude in (("", "grad_norm_min[A]", 0.0), ("-share", "dead_fraction[A]", 1.0))),
    ),
    notes="Norms are clamped at 1e-4 as in peft (the paper divides by the raw norms).",
)
