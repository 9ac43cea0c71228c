"""LoRA-GA with the halves of the split swapped: A from V_[r+1:2r], B from U_[1:r] under direction="ArB2r".

Both factors are still c times orthonormal, W_res = W − η·BA keeps identity, and the first step is still the
rank-2r approximation of G (§3.2 allows either split): only the statement of the configured split (Algorithm 1:
A = V_[1:r], B = U_[r+1:2r]) sees which singular vectors went where.
"""
from unittest import mock

from audit.mutants import Mutant
from variants import loraga

_right = loraga.split_indices


def _swapped(direction, r):
    ia, ib = _right(direction, r)
    return ib, ia


class LoraGaSwapped(loraga.LoraGa):
    def group_init(self, model, targets, cfg, calibration_data):
        with mock.patch.object(loraga, "split_indices", _swapped):
            super().group_init(model, targets, cfg, calibration_data)


MUTANT = Mutant("loraga_split_swapped", "loraga", "init in the wrong direction",
                "A takes V_[r+1:2r] and B takes U_[1:r]: Algorithm 1's halves swapped", ("init",), LoraGaSwapped)
