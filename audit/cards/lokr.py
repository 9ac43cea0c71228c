"""Card: LoKr (LyCORIS, Yeh et al., arXiv 2309.14859), low-rank Kronecker product.

The audited formula is the authors' (LyCORIS lokr.py): γ = alpha/r, and γ = 1 when both Kronecker
factors are full matrices ("alpha ignored in full dimension"); peft keeps alpha/r there, a declared
departure measured on the config with two full factors and alpha ≠ r. Why the authors' γ: the rank r
does not enter a product of two full factors, so alpha/r would scale ΔW by a number that means nothing.
"""
import math

from references.paper import lokr as ref

from ..cards import (SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, OpenChoice, Option, VariantCard,
                     ZeroGrad, peft_linear_only)

# the dense-layer shapes (d_in, d_out) of the zoo (audit/models.py): which factor tensors exist depends on
# them, so the zero-gradient claims name the tensors some zoo layer has under the config
ZOO_SHAPES = ((48, 80), (80, 48), (64, 64), (64, 32), (64, 96), (96, 64), (64, 128), (64, 192))

_WHY_DEAD = {
    "lycoris": {"w1": "W₂ = 0 at init, so ∂L/∂W₁ (a contraction with W₂) is exactly zero",
                "w1_a": "W₂ = 0 at init: W₁'s gradient, hence W₁ₐ's and W₁ᵦ's, is exactly zero",
                "w1_b": "W₂ = 0 at init: W₁'s gradient, hence W₁ₐ's and W₁ᵦ's, is exactly zero",
                "w2_a": "W₂ᵦ = 0 at init, so ∂L/∂W₂ₐ = (∂L/∂W₂) W₂ᵦᵀ is exactly zero; W₂ᵦ learns first"},
    "peft": {"w2": "W₁ = 0 at init, so ∂L/∂W₂ (a contraction with W₁) is exactly zero",
             "w2_a": "W₁ = 0 at init: W₂'s gradient, hence W₂ₐ's and W₂ᵦ's, is exactly zero",
             "w2_b": "W₁ = 0 at init: W₂'s gradient, hence W₂ₐ's and W₂ᵦ's, is exactly zero",
             "w1_b": "W₁ₐ = 0 at init, so ∂L/∂W₁ᵦ = W₁ₐᵀ (∂L/∂W₁) is exactly zero; W₁ₐ learns first"},
}


def _zero_grads(cfg: dict) -> dict[str, ZeroGrad]:
    """The zero factor's Kronecker partner (and the zero half's partner) is dead at step 0; which
    tensors exist: the subject's (cfg["tensors"]), else LyCORIS's rule over the zoo's shapes."""
    present = set(cfg.get("tensors") or {k for d_in, d_out in ZOO_SHAPES for k in ref.layout(d_in, d_out, cfg)})
    why = _WHY_DEAD[cfg.get("init_style", "lycoris")]
    return {k: ZeroGrad(why[k]) for k in sorted(present) if k in why}


def _trainable(d_in: int, d_out: int, cfg: dict) -> int:
    """Every factor entry: of the subject's own factorisation where it is one LoKr allows, else LyCORIS's."""
    shapes = cfg.get("shapes")
    layout = (shapes and ref.layout_given(d_in, d_out, cfg, shapes)) or ref.layout(d_in, d_out, cfg)
    return sum(math.prod(s) for s in layout.values())


def _kron_structure(p) -> float:
    """√(Σ_{i≥2} σᵢ²) of the rearranged ΔW = W_eff − W read off our hooked layer (0 iff ΔW is one
    Kronecker product with LyCORIS's block sizes), relative to N = ‖W‖_F + ‖ΔW‖_F + √d_in·‖b‖: the
    probe's ΔW carries the rounding of y(I) = I·Wᵀ + b + I·ΔWᵀ, of the order u·N (bound 8u below:
    about five roundings of that size per entry)."""
    w_eff, b_eff = p.effective
    dw = w_eff - p.weight
    g = ref.geometry(p.state, p.cfg)  # the subject's own factor shapes, in the order it takes
    n = float(p.weight.norm() + dw.norm() + math.sqrt(dw.shape[1]) * b_eff.norm())
    return ref.kron_residual(dw, g) / n


# Which Kronecker side starts at zero (either keeps ΔW = 0 exactly), and which factor is the block grid
# (W₁ ⊗ W₂ and W₂ ⊗ W₁ are both Kronecker factorisations of a (d_out, d_in) matrix): open choices.
ZERO_SIDE = OpenChoice(
    "zero_factor", "which Kronecker side is zero at init (either makes ΔW = 0)", "init",
    (Option("w2", "W₂ (or W₂ᵦ) = 0", "LyCORIS lycoris/modules/lokr.py (the authors' code)", {"init_style": "lycoris"},
            ("lycoris", "ours")),
     Option("w1", "W₁ (or W₁ₐ) = 0", "peft tuners/lokr/layer.py reset_adapter_parameters (init_weights=True)",
            {"init_style": "peft"}, ("peft",))))
KRON_ORDER = OpenChoice(
    "kron_order", "which factor is the grid of blocks and which the block", "equation",
    (Option("w1w2", "ΔW = W₁ ⊗ W₂", "arXiv 2309.14859 §3; LyCORIS lokr.py and peft (make_kron(w1, w2))",
            {"kron_order": "w1w2"}, ("paper", "peft", "ours", "lycoris")),
     Option("w2w1", "ΔW = W₂ ⊗ W₁", "arXiv 2309.14859 §3: any Kronecker factorisation of ΔW is LoKr's",
            {"kron_order": "w2w1"})),
    affects="outputs")

_FULL = ConfigCase("full-alpha16", {"r": 8, "alpha": 16.0},
                   "both factors full on every zoo layer (r = 8 ≥ max(out_k, in_n)/2): the authors' γ = 1, "
                   "so alpha ≠ r must not scale ΔW (peft's alpha/r = 2 does)")

# peft's scale departure (ΔW twice the paper's on config full-alpha16), measured on the toy MLP in float32 with
# seeds 0-4 (the config's only cell): paper_parity's layer gradients of w1, w2 are off by exactly γ_peft/γ − 1 = 1
# (up to rounding), its outputs by 0.63-0.79 and logits by 0.77-0.90; peft_parity (peft vs ours holding peft's
# state): logits 0.77-0.90, trajectory state 0.006-0.008, and model-level gradients 7.3-12.6 (the loss residual
# changes with the logits, so the factor 2 is amplified). Magnitudes: those maxima with headroom for other seeds.
_SCALE_REASON = ("peft scales ΔW by alpha/r also when both Kronecker factors are full matrices (scaling = alpha / r "
                 "for every layer); the authors' LyCORIS sets alpha = r there (γ = 1: no rank is involved). With "
                 "r = 8, alpha = 16 peft's ΔW is twice the paper's")
_SCALE_SOURCE = ("peft/tuners/lokr/layer.py:189 (self.scaling = alpha / r), :271 (make_kron(w1, w2, scaling)); "
                 "LyCORIS lycoris/modules/lokr.py ('if self.use_w2 and self.use_w1: alpha = lora_dim')")

CARD = VariantCard(
    name="lokr",
    paper="Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation (Yeh et al., ICLR 2024), §3 (LoKr)",
    arxiv="2309.14859",
    equation="ΔW = γ·(W₁ ⊗ W₂),  W₂ = W₂ₐW₂ᵦ when r < max(out_k, in_n)/2;  γ = α/r (γ = 1 when W₁, W₂ are both full);  "
             "W_eff = W + ΔW, b unchanged",
    config={"r": 2, "alpha": 4.0},
    references=("paper", "peft", "lycoris"),
    identity="exact",
    zero_grads=_zero_grads,
    trainable_per_layer=_trainable,
    invariants=(Invariant("kron_structure_residual",
                          "ΔW = W_eff − W of the hooked layer is one Kronecker product W₁ ⊗ W₂ with LyCORIS's block "
                          "sizes (rearranged ΔW has rank one)",
                          _kron_structure, {"float32": 8 * 2.0 ** -24, "bfloat16": 8 * 2.0 ** -8}),),
    bad_inputs=(BadInput({"decompose_factor": 0}, ValueError),
                BadInput({"decompose_factor": -3}, ValueError),
                BadInput({"init_style": "gaussian"}, ValueError)),
    choices=(ZERO_SIDE, KRON_ORDER),
    perturb={"w1": 0.2, "w1_a": 0.2, "w1_b": 0.2, "w2": 0.2, "w2_a": 0.2, "w2_b": 0.2},
    config_id="r2-alpha4",
    config_why="W₂ low rank (r = 2 < max(out_k, in_n)/2 on every zoo layer), γ = alpha/r = 2: the LoRA-style scale",
    configs=(_FULL,
             ConfigCase("decompose-both", {"decompose_both": True},
                        "W₁ = W₁ₐW₁ᵦ as well (decompose_both, r = 2 < max(out_l, in_m)/2): four tensors, γ = 2"),
             ConfigCase("peft-init", {"init_style": "peft"},
                        "peft's init (W₁ = 0, the W₂ side dead at step 0) instead of the authors' (W₂ᵦ = 0)"),
             SUBJECT_DEFAULTS),
    deviations=(
        Deviation("peft-lokr-full-scale", "paper_parity", "*", "peft", "xfail", _SCALE_REASON, _SCALE_SOURCE,
                  magnitude=1.05, subjects=("peft",), configs=("full-alpha16",)),
        Deviation("peft-lokr-full-scale-vs-ours", "peft_parity", "*", "peft", "xfail", _SCALE_REASON, _SCALE_SOURCE,
                  magnitude=20.0, subjects=("peft",), configs=("full-alpha16",)),
        peft_linear_only("lokr", "peft/tuners/lokr/model.py:89-93 (layers_mapping: Conv2d, Conv1d, Linear); "
                                 "peft/tuners/lycoris_utils.py:242 (TypeError 'not supported')"),
    ),
    notes="Init: the authors' code zeroes W₂ (or W₂ᵦ), peft's default (init_weights=True) zeroes W₁ (or W₁ₐ); both "
          "give ΔW = 0 exactly, and init_style audits either. The peft subject runs peft's init_weights='lycoris' "
          "(peft ≥ 0.17.0) for the authors' style, so its own defaults config is audited with init_style 'peft'.",
)
