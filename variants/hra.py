"""HRA, Householder Reflection Adaptation (Yuan, Liu, Xu, arXiv 2405.17484, §3 eq. 4).

    W' = W · H_0 H_1 ⋯ H_{r−1},   H_i = I − 2 u_i u_iᵀ / ‖u_i‖²,   y = x W'ᵀ + b

Input side, product in index order (peft's and the authors' GLUE code's convention). As an input
hook this is x ← x H_{r−1} ⋯ H_0 (the highest index applied first), then the base layer.
The r reflections are applied at once in the compact WY / UT-transform form (Joffrain, Low,
Quintana-Ortí, van de Geijn, "Accumulating Householder transformations, revisited", ACM TOMS 2006):
with V = [u_{r−1}, …, u_0] unit columns, H_{r−1} ⋯ H_0 = I − V S⁻¹ Vᵀ, S = ½·diag(VᵀV) + striu(VᵀV)
(upper triangular r × r), so x ← x − (x V)(S⁻¹ Vᵀ): two skinny GEMMs like LoRA's instead of r
rank-1 passes over x, each reading and writing all of it (2.7× the base model's fwd+bwd at bench size).
Init (peft's symmetric init): kaiming-uniform half (r/2 vectors), each duplicated next to itself
(u_0 = u_1, ...), so each pair cancels (H H = I) and the layer is the identity numerically.
r must be even. Every u gets a gradient at step 0, the two vectors of a pair exactly opposite ones.
The paper's orthogonality regulariser is not part of the forward (peft omits it too): see
``orthogonality_penalty`` to add it to a loss.
``apply_gs`` (peft's apply_GS): the vectors are orthonormalised (Gram–Schmidt) first, so the product is one
reflection through their span, I − 2QQᵀ (Q: an orthonormal basis of span(u), here from a QR; the map does
not depend on the basis' signs or order). It cannot start at the identity, and collinear pairs have no
Gram–Schmidt basis, so its init draws all r vectors independently.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._base import ParamSpec, Variant
from ._config import AdapterConfig
from ._peft_format import PeftFormat, peft_type_is
from ._tensor_init import kaiming_uniform_


@dataclass(frozen=True)
class HraConfig(AdapterConfig):
    variant = "hra"
    unused = ("alpha",)
    extensions = ("apply_gs",)
    apply_gs: bool = False

    def check(self):
        if self.r % 2 and not self.apply_gs:
            raise self.fail("r", f"must be even for HRA's symmetric (identity) init, got {self.r}")


class Hra(Variant):
    name = "hra"
    Config = HraConfig
    # peft's HRAConfig: hra_u is (d_in, r), the Householder vectors as columns (ours as rows)
    peft_format = PeftFormat(
        peft_type="HRA", tensors={"u": "hra_u"}, transforms={"u": "transpose"}, claims=peft_type_is("HRA"),
        to_config=lambda cfg, st: {"r": cfg.r, "apply_GS": cfg.apply_gs, "init_weights": True, "bias": "none"},
        from_config=lambda pcfg, shapes: {"r": int(pcfg.get("r", 8)), "apply_gs": bool(pcfg.get("apply_GS"))},
        reads=("r", "apply_GS"), fixed={"bias": ("none",)}, inert=("init_weights",))
    hook = "input"

    def param_specs(self, d_in, d_out, r, cfg):
        return {"u": ParamSpec((r, d_in))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > d_in:
            raise self.rank_error(cfg, name, d_in, "d_in: at most d_in independent reflections")

    def init(self, layer, cfg, gen):
        u = layer.adapter_u
        if cfg.apply_gs:  # no identity to start from: r independent draws (pairs would have no GS basis)
            kaiming_uniform_(u, gen, fan_in=u.shape[0])
            return
        half = torch.empty(u.shape[0] // 2, u.shape[1], dtype=torch.float64)
        kaiming_uniform_(half, gen, fan_in=u.shape[0] // 2)
        u.copy_(half.repeat_interleave(2, dim=0))

    def forward_input(self, layer, x):
        u = layer.adapter_u
        if self.cfg.apply_gs:  # one reflection through span(u): x ← x − 2 (x Q) Qᵀ
            q = torch.linalg.qr(u.t())[0]  # (d_in, r) orthonormal basis of span(u)
            h = x.to(u.dtype).reshape(-1, x.shape[-1])
            return torch.addmm(h, h @ q, q.t(), alpha=-2).view(x.shape).to(x.dtype)
        v = (u / u.norm(dim=1, keepdim=True)).flip(0)  # rows u_{r−1}, …, u_0: Vᵀ, the first applied first
        gram = v @ v.t()
        s = torch.triu(gram, diagonal=1) + torch.diag_embed(0.5 * torch.diagonal(gram))
        k = torch.linalg.solve_triangular(s, v, upper=True)  # S⁻¹ Vᵀ (r, d_in)
        h = x.to(u.dtype).reshape(-1, x.shape[-1])
        return torch.addmm(h, h @ v.t(), k, alpha=-1).view(x.shape).to(x.dtype)


def orthogonality_penalty(u: torch.Tensor) -> torch.Tensor:
    """‖I_r − ÛᵀÛ‖_F² with Û the unit-normalised vectors (the paper's regulariser, eq. 6)."""
    unit = u / u.norm(dim=1, keepdim=True)
    eye = torch.eye(u.shape[0], dtype=u.dtype, device=u.device)
    return ((unit @ unit.t()) - eye).pow(2).sum()
