"""Card: LoRA-GA (Wang, Yu, Li, arXiv 2407.05000)."""
import math

from ..cards import SUBJECT_DEFAULTS, BadInput, ConfigCase, Deviation, Invariant, VariantCard
from ..numerics import SPREAD_FACTOR

# κ = max(|W_res| + η|B||A|) / max|W| at init, measured on the zoo (paper config, seed 0): gpt2 15.0, phi3 11.8,
# qwen3 10.8, mlp 6.2. The stable scale c = d_out^{1/4}/√γ does not follow W's size, so the offset η·BA and W_res
# are up to κ times W, and the layer's output rounds at their size: identity holds up to κ times the rounding of
# the base weights. Bound: SPREAD_FACTOR × KAPPA × u (float32); bf16's own spread already covers it.
KAPPA = 16.0
_IDENTITY_TOL = SPREAD_FACTOR * KAPPA * 2.0 ** -24


def _scale(cfg: dict) -> float:
    r, alpha = cfg["r"], cfg["alpha"]
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _reconstruction(p) -> float:
    """max |W_res + η·B A − W| / max (|W_res| + η·|B||A|) on the live layer at init (W_res is its weight).

    Normalised by the size of the summed terms, each carrying its own rounding. Bound: W_res rounded to the base
    dtype (≤ u·|W_res|) plus A, B rounded to the adapter dtype (≤ 2u·η|B||A|): ≤ 4u in fp32; in bf16 W_res's
    rounding dominates (2u)."""
    s = _scale(p.cfg)
    a, b = p.state["A"], p.state["B"]
    rebuilt = p.weight + s * (b @ a)
    size = (p.weight.abs() + s * (b.abs() @ a.abs())).max()
    return float((rebuilt - p.original_weight).abs().max() / size)


CARD = VariantCard(
    name="loraga",
    paper="LoRA-GA: Low-Rank Adaptation with Gradient Approximation (Wang, Yu, Li, NeurIPS 2024), §3.2-3.3, "
          "Algorithm 1",
    arxiv="2407.05000",
    equation="G = ∂ℓ/∂W = U S Vᵀ;  A = c·V_[1:r]ᵀ,  B = c·U_[r+1:2r],  c = d_out^{1/4}/√γ;  W_res = W − η·BA;  "
             "y = x(W_res + η·BA)ᵀ + b,  η = α/√r",
    config={"r": 4, "alpha": 8.0, "use_rslora": True, "direction": "ArB2r", "stable_gamma": 16.0},
    references=("paper", "peft"),
    identity="numeric",
    needs_calibration=True,
    trainable_per_layer=lambda d_in, d_out, c: c["r_layer"] * (d_in + d_out),
    invariants=(Invariant("reconstruction_rel_err", "W_res + η·BA reproduces the original W",
                          _reconstruction, {"float32": 4 * 2.0 ** -24, "bfloat16": 2 * 2.0 ** -8}, at="init"),),
    bad_inputs=(BadInput({"calibration_data": None}, ValueError),
                BadInput({"calibration_data": []}, ValueError),
                BadInput({"direction": "BrAr"}, ValueError),
                BadInput({"stable_gamma": 0.0}, ValueError),
                BadInput({"r": 33}, ValueError)),
    config_id="paper",
    config_why="Algorithm 1: A from V_[1:r], B from U_[r+1:2r], η = α/√r (rsLoRA), γ = 16",
    configs=(ConfigCase("a2r-br", {"direction": "A2rBr"}, "the other half-split §3.2 allows: A from V_[r+1:2r], "
                        "B from U_[1:r]"),
             ConfigCase("ar-br", {"direction": "ArBr"}, "the interleaved split: A from the even-numbered pairs, B from "
                        "the odd-numbered ones (1-based)"),
             ConfigCase("alpha-over-r", {"use_rslora": False, "stable_gamma": 64.0}, "η = α/r and γ = 64: the scale "
                        "in W_res and the forward, c = d_out^{1/4}/8 on A and B"),
             SUBJECT_DEFAULTS),
    deviations=(
        Deviation("loraga-offset-larger-than-w", "identity_at_init", "layer_max_rel_err|logits_rel_err", "paper",
                  "tolerance",
                  "Algorithm 1 offsets W by η·BA whose size is set by the stable scale c² = √d_out/γ and η, not by W: "
                  "W_res and η·BA are up to κ ≈ 15× W on the zoo, so x W_resᵀ + η(xAᵀ)Bᵀ cancels terms κ times the "
                  "output and rounds at their size (measured 1.7e-6 relative on gpt2 float32, 1.4× the one-ulp-of-W "
                  f"bound); bound {SPREAD_FACTOR:g} × κ_max (= {KAPPA:g}) × u",
                  "arXiv 2407.05000 Algorithm 1 lines 8-10; §3.3 (c chosen for the output's variance, not W's scale)",
                  tolerance=_IDENTITY_TOL, dtypes=("float32",)),
    ),
    notes="ℓ is the calibration batches' next-token cross-entropy (labels = -100 and padding ignored), the audit's "
          "protocol for a causal LM; the toy MLP's logits take the same loss. §3.2 leaves the split of the top 2r "
          "pairs between A and B free (each is optimal); the authors' code and peft name three (direction).",
)
