"""MiSS (matrix shard sharing; formerly Bone / DiSHA) paper formula (float64).

State per adapted layer (references/STATE_LAYOUT.md): one tensor D whose shape depends on the form (cfg "mode"):
balance D (r, d_out); mini D (r, mini_r); bat D (d_out/r, r, r) (one r × r block B_i per output block i).
"""

from __future__ import annotations

import torch

from ._common import InitClaim, f64, linear

EQUATION = ("balance: ΔW[:, k] = D[k mod r, :]ᵀ (every r-wide input shard shares D);  mini: D[:, o] = D_s[:, o mod mini_r];  "
            "bat: W'_ij = W_ij + W_ij B_i + B_i on r × r blocks;  W_eff = W + ΔW, b unchanged")
CITATION = (
    "Kang, Yin, MiSS: Revisiting the Trade-off in LoRA with an Efficient Shard-Sharing Structure (earlier titles "
    "Bone, DiSHA), arXiv:2409.15371; numbers of its 'Revisiting the Trade-off' version: §4.1 eq. (2) W = W₀ + "
    "expand(D), D initialised to zeros, and §4.2 eqs. (4)-(7), the efficient form MiSSᵉ: D ∈ R^{d×r}, x cut into "
    "r-wide chunks x⁽ⁱ⁾ summed to S (eq. (6)), ΔWx = DS (eq. (7)), i.e. column k of ΔW is column k mod r of D; here "
    "D is stored (r, d_out) as in its Fig. 3 pseudocode and peft, and 'balance' is this form. §4.1's eq. (3) writes "
    "another expand (row i of D repeated over an output shard) that no mode here uses. The block-affine form (Bone's "
    "'Bat', W_ij + W_ij B_i + B_i on r × r blocks) is from the earlier Bone/DiSHA versions, absent from the MiSS "
    "version (its number there unverified); the authors' Bone code (JL-er/Bone README, BoneLinear) computes "
    "rearrange(W, '(a r1) (b r2) -> b a r1 r2') @ bone + bone with bone (d_out/r, r, r). The partial last shard when "
    "r does not divide d_in (x zero-padded) and the 'mini' tiling along d_out are peft's (tuners/miss/layer.py), not "
    "the paper's"
)


def delta(W: torch.Tensor, state: dict, cfg: dict) -> torch.Tensor:
    """ΔW (d_out, d_in) of the configured form, built entry by entry from its definition (no reshapes)."""
    W = f64(W)
    d_out, d_in = W.shape
    D = f64(state["D"])
    mode = cfg.get("mode", "balance")
    if mode == "bat":
        r = D.shape[-1]
        if d_in % r or d_out % r or D.shape[0] * r != d_out:
            raise ValueError(f"bat needs r × r blocks: W {tuple(W.shape)}, B {tuple(D.shape)}")
        rows = []
        for i in range(d_out // r):
            Bi = D[i]
            cols = [W[i * r:(i + 1) * r, j * r:(j + 1) * r] @ Bi + Bi for j in range(d_in // r)]
            rows.append(torch.cat(cols, dim=1))
        return torch.cat(rows, dim=0)
    r = D.shape[0]
    if r > d_in:
        raise ValueError(f"shard size r = {r} exceeds d_in = {d_in}")
    if mode == "mini":
        mini_r = D.shape[1]
        if d_out % mini_r:
            raise ValueError(f"mini_r = {mini_r} does not divide d_out = {d_out}")
        D = D[:, torch.arange(d_out) % mini_r]          # D[:, o] = D_small[:, o mod mini_r]
    elif D.shape[1] != d_out:
        raise ValueError(f"D {tuple(D.shape)} does not fit d_out = {d_out}")
    return D[torch.arange(d_in) % r, :].T               # column k of ΔW is row (k mod r) of D


def merged(W: torch.Tensor, b: torch.Tensor | None, state: dict, cfg: dict):
    """W_eff = W + ΔW, b_eff = b (arXiv:2409.15371 §4.1 eq. (2), §4.2 eq. (7); no scale in any form)."""
    return f64(W) + delta(W, state, cfg), f64(b)


def forward(x, W, b, state, cfg):
    """y = x W_effᵀ + b_eff in float64."""
    return linear(x, *merged(W, b, state, cfg))


def layout(d_in: int, d_out: int, cfg: dict) -> dict[str, tuple]:
    """The canonical tensors this formula reads and their shapes (references/STATE_LAYOUT.md): D (r, d_out) for
    balance, (r, mini_r) for mini, (d_out/r, r, r) for bat."""
    r, mode = int(cfg["r"]), cfg.get("mode", "balance")
    if mode == "bat":
        return {"D": (d_out // r, r, r)}
    if mode == "mini":
        return {"D": (r, int(cfg.get("mini_r", 1)))}
    return {"D": (r, d_out)}


def init_claims(W, b, state, cfg, inputs=None) -> list[InitClaim]:
    """MiSS init (arXiv:2409.15371 §4.1, Table 1 "D∼0"): the shared fragment (every form's trainable matrix)
    starts at zero, so ΔW = 0 exactly and the adapted model is the base model."""
    D = state["D"].detach()
    return [InitClaim("D_max_abs", "exact", "§4.1: the shared fragment D (bat: every block B_i) is 0 at init",
                      value=float(D.abs().max()) if D.numel() else 0.0)]
