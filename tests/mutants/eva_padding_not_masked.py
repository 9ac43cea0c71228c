"""EVA that feeds every token of a calibration batch into the PCA, padding and label-ignored ones too.

The directions are still principal directions of *some* layer inputs, orthonormal, with B = 0: the
forward is the identity and, on unmasked calibration data, the init statement holds. Only calibration
batches that carry an attention mask or labels = -100 reveal it (a batch of padded prompts).
"""

from unittest import mock

from audit.mutants import Mutant
from variants import _calibration, eva


class EvaIgnoresMask(eva.Eva):
    def group_init(self, model, targets, cfg, calibration_data):
        # no token is ever dropped
        with mock.patch.object(_calibration, "kept_tokens", lambda batch, ignore_label=None: None):
            super().group_init(model, targets, cfg, calibration_data)


MUTANT = Mutant("eva_padding_not_masked", "eva", "calibration mask ignored",
                "the PCA of the layer inputs includes padded tokens (attention_mask 0) and labels = -100 ones",
                ("init",), EvaIgnoresMask)
