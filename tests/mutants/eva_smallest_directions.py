"""EVA that keeps eigh's ascending order: A holds the r *least* explained-variance directions.

The rows are still orthonormal eigenvectors of the input covariance (the old invariant, AAᵀ = I,
passes) and B = 0 keeps the forward at identity: only the init statement sees the wrong directions.
"""

from audit.mutants import Mutant
from variants import eva


class _AscendingMoments(eva._Moments):
    def principal(self):
        vals, vecs = super().principal()
        return vals.flip(0), vecs.flip(0)  # the eigh order, never flipped to descending


class EvaSmallest(eva.Eva):
    def group_init(self, model, targets, cfg, calibration_data):
        original = eva._Moments
        eva._Moments = _AscendingMoments
        try:
            super().group_init(model, targets, cfg, calibration_data)
        finally:
            eva._Moments = original


MUTANT = Mutant("eva_smallest_directions", "eva", "init in the wrong direction",
                "A = the r smallest principal directions of the layer inputs (eigh's ascending order kept)",
                ("init",), EvaSmallest)
