"""EVA that keeps eigh's ascending order: A holds the r *least* explained-variance directions.

The rows are still orthonormal eigenvectors of the input covariance (the old invariant, AAᵀ = I,
passes) and B = 0 keeps the forward at identity: only the init statement sees the wrong directions.
"""

from unittest import mock

from audit.mutants import Mutant
from variants import eva


class _AscendingMoments(eva._Moments):
    def principal(self):
        vals, vecs = super().principal()
        return vals.flip(0), vecs.flip(0)  # the eigh order, never flipped to descending


class EvaSmallest(eva.Eva):
    def group_init(self, model, targets, cfg, calibration_data):
        with mock.patch.object(eva, "_Moments", _AscendingMoments):
            super().group_init(model, targets, cfg, calibration_data)


MUTANT = Mutant("eva_smallest_directions", "eva", "init in the wrong direction",
                "A = the r smallest principal directions of the layer inputs (eigh's ascending order kept)",
                ("init",), EvaSmallest)
