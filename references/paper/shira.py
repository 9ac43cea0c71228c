"""SHiRA paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): ``indices`` (2, K) integer (row, column) positions of the
sparse mask M in the canonical (d_out, d_in) weight, and ``values`` (K,) the trained entries there,
K = r·(d_in + d_out). S is the (d_out, d_in) matrix holding ``values`` at ``indices`` and zero elsewhere.
"""

from __future__ import annotations

import math

import torch

from ._common import InitClaim, f64, linear

EQUATION = "W_new = W + S,  S = M ⊙ S (support: the K = r·(d_in + d_out) mask positions), b unchanged"
CITATION = (
    "Bhardwaj, Pandey, Priyadarshi, Ganapathy, Esteves, Kadambi, Borse, Whatmough, Garrepalli, Van Baalen, Teague, "
    "Nagel, Sparse High Rank Adapters, arXiv:2406.13175 (NeurIPS 2024), §3.1 and Fig. 2: only the entries of W "
    "selected by a fixed sparse binary mask M ∈ {0, 1}^{n×m} are trained (the gradients masked by a Hadamard product "
    "with M), masks SHiRA-Struct, -Rand (\"randomly setting 1-2% parameters as trainable\"), -WM, -Grad, -SNIP; "
    "§3.2: the changed weights stored as values and indices and written into W; Appendix F.3 eq. (4) Y = (W + S)X + "
    "b and Appendix I: S = W_new − W, W_new = W + αS (α a scale at inference, 1 as trained; §4.1 Lemma 4.3). "
    "SHiRA-Rand's mask in Appendix B.2 eq. (1) is a Bernoulli(p) draw per entry (a random count); the fixed count K "
    "= r·(d_in + d_out) of distinct uniform positions here is peft's (ShiraConfig r, random_mask), the LoRA-equal "
    "parameter count the paper compares at (Lemma 4.2)"
)


def positions(state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) int64 of the mask; integer positions given as floats (a float64 copy) are rounded."""
    idx = state["indices"].detach()
    if idx.is_floating_point():
        idx = idx.round()
    idx = idx.long()
    return idx[0], idx[1]


def sparse_matrix(W: torch.Tensor, state: dict) -> torch.Tensor:
    """S (d_out, d_in) in the compute dtype: ``values`` at ``indices`` (a repeated position adds)."""
    rows, cols = positions(state)
    d_out, d_in = W.shape
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= d_out or int(cols.min()) < 0
                         or int(cols.max()) >= d_in):
        raise ValueError(f"SHiRA mask positions outside the ({d_out}, {d_in}) weight")
    vals = f64(state["values"]).reshape(-1)
    flat = torch.zeros(d_out * d_in, dtype=vals.dtype, device=vals.device)
    return flat.index_add(0, (rows * d_in + cols).to(vals.device), vals).reshape(d_out, d_in)


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_new = W + S, b unchanged (arXiv:2406.13175 §3.1-3.2)."""
    return f64(W) + sparse_matrix(W, state), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_newᵀ + b in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """values (K,), indices (2, K), K = r·(d_in + d_out)."""
    k = int(cfg["r"]) * (d_in + d_out)
    return {"values": (k,), "indices": (2, k)}


# -- init statements (references/paper/_common.py "init statements") ----------------------------------

KS_ALPHA = 1e-6  # false-alarm rate of the uniformity claim per layer


def uniform_margin(flat: torch.Tensor, n: int) -> float:
    """critical − KS statistic of K distinct positions of {0, …, n−1} against the uniform law (≥ 0: they fit).

    The positions are mapped to (p + ½)/n; the discreteness moves the empirical CDF by at most 1/n, added to
    the DKW critical value √(ln(2/α)/(2K)). Drawing without replacement makes the empirical CDF less variable
    than i.i.d. draws (hypergeometric), so the DKW bound stays conservative."""
    k = flat.numel()
    if k == 0:
        return 0.0
    p, _ = torch.sort((flat.to(torch.float64) + 0.5) / n)
    i = torch.arange(1, k + 1, dtype=torch.float64)
    ks = float(torch.maximum(i / k - p, p - (i - 1) / k).max())
    return math.sqrt(math.log(2 / KS_ALPHA) / (2 * k)) + 1.0 / n - ks


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """SHiRA init (arXiv:2406.13175 §3.1): training starts from the pretrained weights, so S = 0 (values = 0
    exactly); the mask holds K = r·(d_in + d_out) distinct positions inside the weight (peft's count: the
    paper's Appendix B.2 draws each entry Bernoulli(p), so its count is random); SHiRA-Rand (mask_type
    "random") draws them uniformly ("lower": the KS margin of ``uniform_margin`` ≥ 0; given its count, a
    Bernoulli mask's positions are uniform too)."""
    d_out, d_in = W.shape
    rows, cols = positions(state)
    flat = rows * d_in + cols
    inside = (rows >= 0) & (rows < d_out) & (cols >= 0) & (cols < d_in)
    k = int(cfg.get("r_layer", cfg["r"])) * (d_in + d_out)
    claims = [
        InitClaim("values_max_abs", "exact", "§3.1: training starts at W (S = 0): every value is 0",
                  value=float(state["values"].detach().abs().max()) if state["values"].numel() else 0.0),
        InitClaim("mask_size_minus_K", "exact", f"the mask holds K = r·(d_in + d_out) = {k} positions",
                  value=float(abs(flat.numel() - k))),
        InitClaim("mask_positions_outside", "exact", "every position lies inside the (d_out, d_in) weight",
                  value=float((~inside).sum())),
        InitClaim("mask_positions_repeated", "exact", "the K positions are distinct (a mask is a set of weights)",
                  value=float(flat.numel() - torch.unique(flat).numel())),
    ]
    if cfg.get("mask_type", "random") == "random":
        claims.append(InitClaim("mask_uniform_ks_margin", "lower", f"SHiRA-Rand: the positions are a uniform draw "
                                f"without replacement from the {d_out * d_in} entries; KS margin at α = {KS_ALPHA:g}",
                                value=uniform_margin(flat[inside], d_out * d_in), bound=0.0))
    return claims

