"""CorDA whose knowledge-preserved mode adapts the r *largest* components (as IPM) instead of the smallest.

A, B and W_res are a correct split of those components, so identity, the forward and the reconstruction all
pass; only the init statement under corda_method="kpm" (the card's kpm config) sees the wrong components
(arXiv 2406.05223 §3.2: KPM trains the smallest r, freezing the principal ones that carry the knowledge).
"""
from unittest import mock

from audit.mutants import Mutant
from variants import corda

_right = corda.context_factors


def _always_largest(w, cov, r, mode):
    return _right(w, cov, r, "ipm")


class CordaKpmLargest(corda.Corda):
    def group_init(self, model, targets, cfg, calibration_data):
        with mock.patch.object(corda, "context_factors", _always_largest):
            super().group_init(model, targets, cfg, calibration_data)


MUTANT = Mutant("corda_kpm_largest", "corda", "init in the wrong direction",
                "KPM takes the r largest components of W C (IPM's) instead of the r smallest",
                ("init",), CordaKpmLargest, configs=("kpm",), models=("mlp",))
