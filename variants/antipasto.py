"""AntiPaSTO (M. J. Clark, arXiv 2601.07473): SVD steering adapter, torch hook formulation.

    W = U S Vh (top r),  W_res = W − U_r diag(S_r) Vh_r   (overwrites the layer's weight)
    R_bd = blockdiag(R_1..R_n),  R_i = (I − X)⁻¹(I + X),  X = A/2,  A = a·tanh(½(M−Mᵀ)/a),  a = 2 tan(θ_max/2)
    rotate_basis "V": y = x W_resᵀ + b + ((x (R_bd Vh)ᵀ) ⊙ (S + δ)) Uᵀ
    rotate_basis "U": y = x W_resᵀ + b + ((x Vhᵀ) ⊙ (S + δ)) (U R_bdᵀ)ᵀ ;  "none": no rotation
M is the strict upper triangle filled from T (n_blocks = r / block_size rows). Trainable: δ (r), T.
Init: T = 0 (R = I exactly), δ = 4e-4 + 4e-4·N(0,1): deliberately NOT identity; the offset
U diag(δ) Vh is the declared identity error. W_res is built from the factors after casting them
to the adapter dtype, so their rounding is absorbed. Chirality: this uses R where the antipasto3
reference uses Rᵀ (= R(−T)). With calibration_data, the r directions are re-selected by
score_i = S_i · mean|x·vh_i| (top r, index order). The bias is unchanged.
Deviation: r must be divisible by block_size (antipasto3 rounds r down instead).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._tensor_init import normal_, top_r_svd

DELTA_INIT = 4e-4


@dataclass(frozen=True)
class AntipastoConfig(AdapterConfig):
    variant = "antipasto"
    unused = ("alpha",)
    block_size: int = 4
    max_rotation_angle: float = 0.5
    rotate_basis: Literal["V", "U", "none"] = "V"

    def check(self):
        if self.block_size < 2:
            raise self.fail("block_size", f"must be >= 2, got {self.block_size}")
        if self.r % self.block_size:
            raise self.fail("r", f"r={self.r} must be divisible by block_size={self.block_size}")
        if not 0 < self.max_rotation_angle < math.pi:
            raise self.fail("max_rotation_angle", f"must be in (0, pi), got {self.max_rotation_angle}")


def cayley_blocks(t: torch.Tensor, block_size: int, max_angle: float) -> torch.Tensor:
    """(n_blocks, bs, bs) orthogonal blocks from T (n_blocks, bs(bs−1)/2), computed in float32+."""
    dt = torch.promote_types(t.dtype, torch.float32)
    iu = torch.triu_indices(block_size, block_size, 1, device=t.device)
    m = torch.zeros(t.shape[0], block_size, block_size, dtype=dt, device=t.device)
    m[:, iu[0], iu[1]] = t.to(dt)
    a_lim = 2 * math.tan(max_angle / 2)
    skew = a_lim * torch.tanh(0.5 * (m - m.transpose(-1, -2)) / a_lim)
    eye = torch.eye(block_size, dtype=dt, device=t.device)
    return torch.linalg.solve(eye - skew / 2, eye + skew / 2)


class Antipasto(Variant):
    name = "antipasto"
    Config = AntipastoConfig
    needs_dense_weight = True
    mutates_base_weight = True

    def param_specs(self, d_in, d_out, r, cfg):
        bs = cfg.block_size
        return {"U": ParamSpec((d_out, r), trainable=False), "S": ParamSpec((r,), trainable=False),
                "Vh": ParamSpec((r, d_in), trainable=False), "delta": ParamSpec((r,)),
                "T": ParamSpec((r // bs, bs * (bs - 1) // 2))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):
            raise self.rank_error(cfg, name, min(d_in, d_out), "min(d_in, d_out): the SVD has no more components")

    def init(self, layer, cfg, gen):
        u, s, vh = top_r_svd(self.weight(layer), layer.adapter_rank)
        self._set_factors(layer, self.weight(layer).to(torch.float64), u, s, vh)
        normal_(layer.adapter_delta, DELTA_INIT, gen, mean=DELTA_INIT)
        layer.adapter_T.zero_()

    def _set_factors(self, layer, w64, u, s, vh):
        layer.adapter_U.copy_(u)
        layer.adapter_S.copy_(s)
        layer.adapter_Vh.copy_(vh)
        uc, sc, vc = (layer.adapter_U.to(torch.float64), layer.adapter_S.to(torch.float64),
                      layer.adapter_Vh.to(torch.float64))
        self.weight(layer).copy_(w64 - (uc * sc) @ vc)

    def group_init(self, model, targets, cfg, calibration_data):
        if calibration_data is None:
            return
        from ._calibration import collect_inputs
        from ._state import state_of
        st = state_of(model)
        originals = {n: st.original_weight(n).to(torch.float64) for n in targets}
        svds = {n: torch.linalg.svd(originals[n], full_matrices=False) for n in targets}
        score_sum = {n: torch.zeros(svds[n][1].shape[0], dtype=torch.float64) for n in targets}
        count = dict.fromkeys(targets, 0)

        def on_input(n, x):
            score_sum[n] += (x.to("cpu", torch.float64) @ svds[n][2].t()).abs().sum(0)
            count[n] += x.shape[0]

        collect_inputs(model, targets, calibration_data, on_input)
        with torch.no_grad():
            for n, mod in targets.items():
                u, s, vh = svds[n]
                score = s * score_sum[n] / max(count[n], 1)
                keep = torch.sort(torch.topk(score, mod.adapter_rank).indices).values
                self._set_factors(mod, originals[n], u[:, keep], s[keep], vh[keep])

    def forward(self, layer, x, y):
        U, S, Vh, delta, T = (layer.adapter_U, layer.adapter_S, layer.adapter_Vh,
                              layer.adapter_delta, layer.adapter_T)
        cfg = self.cfg
        h = x.to(Vh.dtype)
        if cfg.rotate_basis == "none":
            return y + ((h @ Vh.t()) * (S + delta) @ U.t()).to(y.dtype)
        rot = cayley_blocks(T, cfg.block_size, cfg.max_rotation_angle).to(Vh.dtype)
        n, bs = rot.shape[0], cfg.block_size
        if cfg.rotate_basis == "V":
            vh_eff = (rot @ Vh.reshape(n, bs, -1)).reshape(Vh.shape)
            return y + (((h @ vh_eff.t()) * (S + delta)) @ U.t()).to(y.dtype)
        u_eff = torch.einsum("onb,ncb->onc", U.reshape(U.shape[0], n, bs), rot).reshape(U.shape)
        return y + (((h @ Vh.t()) * (S + delta)) @ u_eff.t()).to(y.dtype)
