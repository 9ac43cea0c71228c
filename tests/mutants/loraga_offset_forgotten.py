"""LoRA-GA that forgets Algorithm 1's line 10 (W ← W − η·BA): the base keeps W, so the model at init is
W + η·BA, no longer the pretrained one. A and B are the paper's: the init statement passes; identity does not."""
import torch

from audit.mutants import Mutant
from variants import loraga
from variants._calibration import collect_gradients


class LoraGaNoOffset(loraga.LoraGa):
    def group_init(self, model, targets, cfg, calibration_data):
        grads, _ = collect_gradients(model, targets, calibration_data)
        for n, mod in targets.items():
            r = mod.adapter_rank
            u, _, vh = torch.linalg.svd(grads[n], full_matrices=False)
            ia, ib = loraga.split_indices(cfg.direction, r)
            d_out = loraga.dense_weight(mod).shape[0]
            c = d_out ** 0.25 / cfg.stable_gamma ** 0.5
            with torch.no_grad():
                mod.adapter_A.copy_(c * vh[ia])
                mod.adapter_B.copy_(c * u[:, ib])


MUTANT = Mutant("loraga_offset_forgotten", "loraga", "identity broken at init",
                "W is not offset by η·BA: the adapted model at init is W + η·BA", ("identity_at_init",), LoraGaNoOffset)
