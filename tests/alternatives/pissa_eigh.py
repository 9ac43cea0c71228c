"""PiSSA written independently: the principal singular triplets come from an eigendecomposition of
WᵀW instead of an SVD of W.

    WᵀW = V diag(S²) Vᵀ,  U_r = W V_r / S_r,  A = diag(√(S_r/s)) V_rᵀ,  B = U_r diag(√(S_r/s)),
    W_res = W − s·B A,   y = x W_resᵀ + b + s·(x Aᵀ) Bᵀ,   s = alpha / r

(Meng, Wang, Zhang, arXiv 2404.02948, §3.) eigh in float64 (eigenvalues ascending, reversed here);
the signs are eigh's (the pair u_i, v_i is consistent because u_i is derived from v_i), where ours
fixes the sign of u_i. W_res is built in float64 from A and B as stored in the adapter dtype, then
rounded once to the base dtype. The forward is LoRA's, written out, in the adapter dtype.

    python -m audit run --impl tests/alternatives/pissa_eigh.py:PissaEigh --card pissa
"""
from __future__ import annotations

import torch

from variants import ParamSpec, Variant
from variants.pissa import PissaConfig
from _dense import weight_of


class PissaEigh(Variant):
    name = "pissa"
    Config = PissaConfig
    needs_dense_weight = True
    mutates_base_weight = True

    def param_specs(self, d_in, d_out, r, cfg):
        return {"A": ParamSpec((r, d_in)), "B": ParamSpec((d_out, r))}

    def check_layer(self, name, layer, d_in, d_out, cfg):
        if cfg.r > min(d_in, d_out):
            raise ValueError(f"PissaConfig.r: r={cfg.r} exceeds min(d_in, d_out)={min(d_in, d_out)} "
                             f"for module {name!r}")

    def init(self, layer, cfg, gen):
        r = layer.adapter_A.shape[0]
        s = cfg.alpha / r
        W = weight_of(layer).detach().double()
        evals, evecs = torch.linalg.eigh(W.T @ W)
        top = evals.flip(0)[:r].clamp_min(0)
        V = evecs.flip(1)[:, :r]              # (d_in, r)
        sv = top.sqrt()
        U = (W @ V) / sv                      # (d_out, r)
        root = (sv / s).sqrt()
        layer.adapter_A.copy_(root[:, None] * V.T)
        layer.adapter_B.copy_(U * root)
        A, B = layer.adapter_A.double(), layer.adapter_B.double()
        weight_of(layer).copy_(W - s * (B @ A))

    def forward(self, layer, x, y):
        A, B = layer.adapter_A, layer.adapter_B
        s = self.cfg.alpha / A.shape[0]
        return y + ((x.to(A.dtype) @ A.T) @ (s * B).T).to(y.dtype)
