"""CorDA that forgets to map the decomposition back: A = √(Σ_I/s) V_Iᵀ, not √(Σ_I/s) V_Iᵀ C⁻¹.

W_res = W − s·BA is built from the same wrong A and B, so the layer still equals W at init (identity, the
forward and the reconstruction invariant all pass): only the init statement sees that s·BA is a part of
W C, not of W (arXiv 2406.05223 §3.1, eq. 2).
"""
from unittest import mock

import torch

from audit.mutants import Mutant
from variants import corda


def _not_inverted(w, cov, r, mode):
    u, sv, vh = torch.linalg.svd(w.to(torch.float64) @ cov.to(torch.float64), full_matrices=False)
    idx = slice(0, r) if mode == "ipm" else slice(sv.shape[0] - r, sv.shape[0])
    return u[:, idx], sv[idx], vh[idx]  # the right singular vectors of W C, never multiplied by C⁻¹


class CordaNotInverted(corda.Corda):
    def group_init(self, model, targets, cfg, calibration_data):
        with mock.patch.object(corda, "context_factors", _not_inverted):
            super().group_init(model, targets, cfg, calibration_data)


MUTANT = Mutant("corda_covariance_not_inverted", "corda", "decomposition not mapped back to W",
                "A = √(Σ_I/s) V_Iᵀ: the components of W C, the covariance never inverted back by C⁻¹",
                ("init",), CordaNotInverted)
