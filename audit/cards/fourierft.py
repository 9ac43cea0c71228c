"""Card: FourierFT (Gao et al., arXiv 2405.03003).

The spectral coefficients' init is open: Algorithm 1 draws c ~ N(0, 1) (ΔW ≠ 0 at init; peft's default
init_weights=False), peft's init_weights=True zeroes c (the identity at init). The main config audits the
zero init (where identity_at_init has a claim to check); the normal init is its own config without it.
"""
import math

import torch

from references.paper import fourierft as ref

from ..cards import BadInput, ConfigCase, Deviation, Invariant, OpenChoice, Option, VariantCard


def _spectral_support(p) -> float:
    """‖DFT2(ΔW) outside E ∪ (−E)‖_F / (√(d_out·d_in)·N) of the subject's hooked layer, ΔW = W_eff − W:
    DFT2(Re(IDFT2(S))) = (S + S̃)/2, S̃[j, k] = S[−j, −k], so the spectrum of a correct ΔW lives on the
    entries and their mirrors only (§3). N = ‖W‖_F + ‖ΔW‖_F + √d_in·‖b‖: the probe's ΔW carries the
    rounding of y(I) = I·Wᵀ + b + I·ΔWᵀ, of the order u·N per entry, and DFT2 multiplies a Frobenius norm
    by √(d_out·d_in) (bound 8u below, as for LoKr's structure residual)."""
    w_eff, b_eff = p.effective
    dw = w_eff - p.weight
    d_out, d_in = dw.shape
    e = ref.entry_matrix(d_out, d_in, int(p.cfg["n_frequency"]), int(p.cfg.get("random_loc_seed", 777)))
    mask = torch.ones(d_out, d_in, dtype=torch.bool)
    mask[e[0], e[1]] = False
    mask[(-e[0]) % d_out, (-e[1]) % d_in] = False
    off = torch.fft.fft2(dw)[mask].abs().pow(2).sum().sqrt()
    n = float(p.weight.norm() + dw.norm() + math.sqrt(d_in) * b_eff.norm())
    return float(off) / (math.sqrt(d_out * d_in) * n)


SPECTRUM_INIT = OpenChoice(
    "spectrum_init", "how the spectral coefficients c start", "init",
    (Option("normal", "c ~ N(0, 1): ΔW ≠ 0 at init", "arXiv 2405.03003 Algorithm 1 (torch.randn(n)); peft "
            "init_weights=False (its default)", {"init_weights": "normal"}, ("paper", "peft", "ours")),
     Option("zeros", "c = 0: the base model at init", "peft tuners/fourierft/layer.py reset_fourier_parameters "
            "(init_weights=True)", {"init_weights": "zeros"}, ("peft", "ours"))))

# identity_at_init has no claim under the normal init (ΔW ≠ 0 by design)
_NO_IDENTITY = ("init", "grad_flow", "paper_parity", "peft_parity", "properties")

CARD = VariantCard(
    name="fourierft",
    paper="Parameter-Efficient Fine-Tuning with Discrete Fourier Transform (Gao et al., ICML 2024), §3.1 eqs. (2)-(4), "
          "Algorithm 1",
    arxiv="2405.03003",
    equation=ref.EQUATION,
    config={"n_frequency": 256, "scaling": 150.0, "random_loc_seed": 777, "init_weights": "zeros"},
    references=("paper", "peft"),
    identity="exact",
    trainable_per_layer=lambda d_in, d_out, c: int(c["n_frequency"]),
    invariants=(Invariant("spectral_support_residual",
                          "the 2-D DFT of ΔW = W_eff − W of the hooked layer is zero outside the entries E and their "
                          "mirrors −E (ΔW is the real part of an inverse DFT of a spectrum supported on E)",
                          _spectral_support, {"float32": 8 * 2.0 ** -24, "bfloat16": 8 * 2.0 ** -8}),),
    bad_inputs=(BadInput({"n_frequency": 0}, ValueError),
                BadInput({"n_frequency": 10 ** 7}, ValueError),
                BadInput({"init_weights": "kaiming"}, ValueError),
                BadInput({"scaling": float("inf")}, ValueError)),
    choices=(SPECTRUM_INIT,),
    # c at init is 0 (main) or N(0, 1): σ = 0.05 moves ΔW to ≈ α·σ·√(n/2)/(d_out·d_in) ≈ 0.02 per entry on the
    # zoo's 64 × 64 layers, the size of the base weights' own entries
    perturb={"spectrum": 0.05},
    config_id="n256-zeros",
    config_why="n = 256 coefficients (≤ every zoo layer's d_out·d_in), α = 150 (the paper's GLUE scaling), c = 0 "
               "at init (peft's init_weights=True: the identity at init)",
    configs=(ConfigCase("normal-init", {"init_weights": "normal"},
                        "the paper's init (Algorithm 1): c ~ N(0, 1), so ΔW ≠ 0 at init and identity_at_init is not "
                        "asked", checks=_NO_IDENTITY),
             ConfigCase("seed-scaling", {"random_loc_seed": 3, "scaling": 300.0, "n_frequency": 100},
                        "another entry seed (other entries E), α = 300 (the paper's LLaMA scaling), n = 100"),
             ConfigCase("full-spectrum", {"n_frequency": 3840},
                        "n = d_out·d_in on the MLP's 48 × 80 layers: every entry of the spectrum trains (ΔW spans "
                        "every real matrix)"),
             ConfigCase("defaults", {}, "the subject's own defaults for every method field (peft: n = 1000, "
                        "α = 150, seed 777, c ~ N(0, 1): identity_at_init is not asked)",
                        subject_defaults=True, checks=_NO_IDENTITY)),
    deviations=(
        # GPT-2's attn.c_proj and mlp.c_proj write into the residual stream, whose every reader is a LayerNorm (ln_1,
        # ln_2, ln_f): adding the same value to all d_out features changes nothing downstream. A coefficient at row
        # frequency E₀ = 0 makes ΔW constant down each column, ΔWx = (f·x)·1: exactly that direction, so its gradient
        # is 0 in exact arithmetic (float32 gives 0 or a rounding residue, by seed: seeds 3 and 9 give an exact 0).
        # Bound: the E₀ = 0 entries of those layers under seed 777 and n = 256: 3 of attn.c_proj (64 × 64), 2 of
        # mlp.c_proj (64 × 96), out of 4 × 256 coefficients = 5/1024.
        Deviation("fourierft-gpt2-layernorm-blind-entries", "grad_flow", "dead_fraction[spectrum]", "paper", "tolerance",
                  "on a layer whose output feeds only LayerNorms (GPT-2's c_proj layers, into the residual stream) a "
                  "coefficient at row frequency 0 moves every output feature by the same amount, which LayerNorm "
                  "removes: its gradient is exactly 0 in exact arithmetic (rounding decides whether float32 shows 0)",
                  "arXiv 2405.03003 §3.1 (E drawn uniformly over all d_out·d_in entries, row 0 included); "
                  "transformers GPT2Block (residual stream read through ln_1, ln_2, ln_f)",
                  tolerance=5 / 1024, models=("gpt2",), configs=("n256-zeros",)),
    ),
    notes="The entry matrix E is a function of the layer shape and random_loc_seed (the first n of "
          "torch.randperm(d_out·d_in) from torch.Generator().manual_seed(seed), read row-major), the same on every "
          "side; it is not part of the state, so a subject drawing other entries from the same seed fails paper "
          "parity. Algorithm 1 writes x·ΔW for a square d × d layer: for a square layer that is ΔWᵀ, the same law "
          "with the entries' rows and columns exchanged (a relabelling of a uniform random draw); the audited "
          "convention is §3.1 eq. (4)'s h = W₀x + ΔWx, ΔW (d_out, d_in).",
)
